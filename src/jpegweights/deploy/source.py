"""A replica's model store, filled from a model source: another jpegweights server (its ``/models``
and ``/weights``) or a folder on a shared disk.

>>> store = prepare_store("http://models.internal:8000", Path("/var/cache/jpegweights/ray"))
>>> create_app(Settings(model_dir=store.model_dir, default_model=store.default_model))

Only the compact ``.jpw`` packages cross the network. Each is verified twice before it serves: the
client moves a download into its cache only once its SHA-256 matched the source's strong ETag
(``"sha256-<hex>"``; a cached copy answered 304 is hashed again), and the store decodes it
completely at load. A fetched folder holds no float source (``model.safetensors``), so it serves
its stored quality and answers ``/weights`` at any other one with a 404 that says why.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from jpegweights.client import Client, ProtocolError
from jpegweights.client.cache import check_name
from jpegweights.files import write_atomic


class SourceError(ValueError):
    """A model source that cannot fill a store: neither a URL nor a folder, or missing a model."""


@dataclass(frozen=True)
class LocalStore:
    """A model store ready to serve: ``model_dir`` for ``Settings``; ``default_model`` is the
    source server's default (None for a folder source); ``owned``: a fetched copy of this replica's
    own, removed by ``remove()`` (a shared folder never is)."""

    model_dir: Path
    default_model: str | None = None
    owned: bool = False

    def remove(self) -> None:
        if self.owned:
            shutil.rmtree(self.model_dir, ignore_errors=True)


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def prepare_store(
    source: str, work_dir: Path, *, models: Sequence[str] | None = None, token: str | None = None
) -> LocalStore:
    """The store a replica serves: a folder source as it is; a server's packages (all, or
    ``models``) fetched into a fresh folder under ``work_dir``, through a client cache there
    that the replicas of one machine share (one fetch at a time: the others get 304s).

    Raises ``SourceError``, or the client's errors (``TransportError``, ``IntegrityError``...)."""
    if not is_url(source):
        folder = Path(source)
        if not folder.is_dir():
            raise SourceError(f"model source {source!r} is neither an http(s) URL nor a folder")
        return LocalStore(folder)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = _fresh_store_dir(work_dir / "stores")
    try:
        with _locked(work_dir / ".fetch.lock"):
            default = fetch_models(source, model_dir, cache_dir=work_dir / "client", models=models, token=token)
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    return LocalStore(model_dir, default, owned=True)


def fetch_models(
    source: str, model_dir: Path, *, cache_dir: Path, models: Sequence[str] | None = None, token: str | None = None
) -> str | None:
    """One folder per model in ``model_dir`` (``model.jpw`` and ``model.json``), fetched from
    the jpegweights server at ``source``; returns its default model (None if it names none)."""
    with Client(source, token=token, cache_dir=cache_dir, progress=False) as client:
        listed = {m["name"]: m for m in client.models() if isinstance(m, dict) and isinstance(m.get("name"), str)}
        wanted = list(listed) if models is None else list(models)
        missing = sorted(set(wanted) - set(listed))
        if missing or not wanted:
            raise SourceError(
                f"model source {source} serves no model {', '.join(missing) or '(none at all)'} "
                f"(it serves: {', '.join(sorted(listed)) or 'none'})"
            )
        for name in wanted:
            folder = model_dir / check_name(name)
            folder.mkdir()
            client.download(name, dest=folder / "model.jpw")  # the stored quality: no quality= asked
            meta = {"name": name, "version": str(listed[name].get("version", "1")), "package": "model.jpw"}
            if isinstance(listed[name].get("quality"), int):
                meta["quality"] = listed[name]["quality"]
            write_atomic(folder / "model.json", json.dumps(meta).encode())
        try:
            default = client.default_model()
        except ProtocolError:
            return None
    return default if default in wanted else None


def _fresh_store_dir(stores: Path) -> Path:
    """A new, empty folder for this process's store; folders of processes that died without
    removing theirs (a killed replica) are removed first."""
    stores.mkdir(parents=True, exist_ok=True)
    for old in stores.glob("store-*-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"store-{os.getpid()}-", dir=stores))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (released by the kernel if one dies)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

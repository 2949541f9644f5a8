"""The model store: a directory with one folder per model, loaded into dense modules at start-up.

    models/
      mnist-mlp/
        model.json        {"name", "version", "quality", "package", "source", "report"} (all optional)
        model.jpw         the package served by default (decoded at load time)
        model.safetensors float weights, to produce the package at other qualities (optional)

Packages at other qualities are encoded on first request (``qualities.EncodeQueue``) and cached
on disk under ``cache_dir/<key>/q<Q>.jpw`` (atomic writes; ``qualities.QualityCache``), where
the key is a digest of the stored package and the float source, so every replica sharing the
folder serves the same bytes and a replaced model never gets its predecessor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch

import jpegweights
from jpegweights import handlers
from jpegweights.codec import CodecError, EncodeConfig, encode, load_package
from jpegweights.codec.container import read
from jpegweights.handlers.architectures import expected_tensors
from jpegweights.files import STAGING, atomic_folder, write_atomic

from .batching import batch_limit
from .errors import CacheUnwritable, EncodeQueueFull, ModelNotFound, QualityUnavailable, StoreError
from .qualities import EncodeQueue, QualityCache
from .settings import Settings

log = logging.getLogger("jpegweights.store")


# Model names and versions become path components of the cache: nothing that could climb out.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise StoreError(
            f"{what} {str(value)[:80]!r} is not allowed: "
            "letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return value


@dataclass
class WeightFile:
    path: Path
    etag: str
    size: int
    quality: int
    uncompressed_bytes: int
    held: bool = False  # kept in the qualities cache until ``ModelStore.release``


@dataclass
class Model:
    """A loaded model: its handler (which holds the module) and what the API reports about it."""

    name: str
    version: str
    quality: int
    folder: Path
    package: Path
    source: Path | None
    manifest: dict[str, Any]  # the package's manifest: architecture and handler, to re-encode at other qualities
    config: EncodeConfig  # the package's encode settings: other qualities are coded the same way
    handler: handlers.Handler
    device: str
    decode_seconds: float
    uncompressed_bytes: int
    report: dict[str, Any] = field(default_factory=dict)  # measured fidelity per quality (``_report``)
    bytes_served: dict[int, int] = field(default_factory=dict)  # quality -> bytes of /weights sent
    stamp: tuple = ()  # the folder's files as loaded (mtimes, sizes): a rescan reloads only what changed
    max_batch_size: int = 1  # samples per forward pass, measured at load (``batching.batch_limit``)
    resident_bytes: int = 0  # bytes the model's weights hold in memory
    compressed_domain: dict[str, Any] | None = None  # ``handlers.compress``'s report, when it runs that way
    runtime: handlers.Choice = handlers.Choice("eager")  # what runs its forward passes (``handlers.accelerate``)
    digest: str = ""  # SHA-256 of the stored package, as loaded
    source_digest: str | None = None  # SHA-256 of the float source, once it could be read

    def forward(self, batch: handlers.Batch) -> handlers.Batch:
        """One batched forward pass (the handler's ``run``): outputs on the CPU."""
        return self.handler.run(batch)

    def cache_key(self) -> str:
        """The qualities cache's folder for this model: SHA-256 over what an encode reads (the
        stored package's settings and the float source) and the encoder's release. The source's
        digest is computed here, once, when it could not be read at load. Blocking.

        >>> model.cache_key()
        '3f0c...'
        """
        if self.source_digest is None:
            try:
                self.source_digest = sha256_file(self.source)
            except (OSError, TypeError):  # unreadable (or no source) since ``source_problem`` said yes
                problem = self.source_problem() or f"the float source of model {self.name!r} could not be read"
                raise QualityUnavailable(f"{problem}: only quality {self.quality} is available") from None
        identity = f"{jpegweights.__version__}:{self.digest}:{self.source_digest}"
        return hashlib.sha256(identity.encode()).hexdigest()

    def source_problem(self) -> str | None:
        """Why the float source cannot be read now (none in the folder, gone since, not readable
        by the server's user), or None when it can: other qualities and the gallery's float
        pictures need it, the stored package does not. Learnt by opening the file, because
        safetensors reports every I/O error, a permission error too, as ``FileNotFoundError``.

        >>> model.source_problem()
        "the float source of model 'mnist-mlp' (model.safetensors) is not readable by the server (permission denied)"
        """
        if self.source is None:
            return f"model {self.name!r} has no float source in the store"
        what = f"the float source of model {self.name!r} ({self.source.name})"
        try:
            with open(self.source, "rb"):
                return None
        except PermissionError:
            return f"{what} is not readable by the server (permission denied)"
        except FileNotFoundError:
            return f"{what} is no longer in the store"
        except OSError as exc:
            return f"{what} cannot be read ({exc.strerror or type(exc).__name__})"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _source_digest(source: Path) -> str | None:
    """The float source's SHA-256, or None where it cannot be read now (``Model.cache_key``
    tries again when asked for another quality)."""
    try:
        return sha256_file(source)
    except OSError:
        return None


def check_upload(prefix: bytes, total: int) -> Any:
    """The checked safetensors header of an upload of ``total`` bytes, from its first bytes (at
    least its header's), before the rest is read: a ``.jpw`` package, or safetensors float
    weights whose ``architecture`` (in their metadata) is built on the meta device and whose
    tensors' names and shapes fit it. ``StoreError`` saying why otherwise."""
    from jpegweights.codec.container import is_package, parse_header

    try:
        header, _ = parse_header(prefix, total)
    except CodecError as exc:
        raise StoreError(f"the upload is neither a .jpw package nor a safetensors file: {exc}") from None
    if is_package(header):
        return header
    if "architecture" not in header.metadata:
        raise StoreError(
            "a safetensors upload needs an 'architecture' in its metadata "
            "(as 'jpegweights train' and 'jpegweights import' write)"
        )
    try:
        architecture = json.loads(header.metadata["architecture"])
        _, meta = handlers.skeleton(architecture)
        handlers.fit(
            {k: torch.empty(shape, device="meta") for k, (_, shape, *_) in header.entries.items()},
            expected_tensors(meta),
        )
    except (ValueError, RecursionError, handlers.HandlerError) as exc:
        raise StoreError(f"the safetensors upload does not fit its architecture: {exc}") from None
    return header


def _stage(upload: Path, staging: Path) -> None:
    """Move an upload into a staging folder as a model's files: a ``.jpw`` as it is, or
    safetensors float weights encoded with the default ``EncodeConfig()`` (as ``jpegweights
    import`` does) and kept as the float source, so that other qualities can be served."""
    from safetensors.torch import load_file

    from jpegweights.codec.container import MAX_HEADER_BYTES, is_package

    with open(upload, "rb") as f:
        prefix = f.read(8 + MAX_HEADER_BYTES)  # parse_header reads only the header's own length
    header = check_upload(prefix, upload.stat().st_size)
    if is_package(header):
        os.replace(upload, staging / "model.jpw")
        return
    extra = {k: json.loads(header.metadata[k]) for k in ("architecture", "handler") if k in header.metadata}
    try:
        state = load_file(upload)  # memory-mapped: the tensors are read once, by the encoder
        package = encode(state, EncodeConfig(), **extra)
    except (ValueError, RecursionError, OSError) as exc:
        raise StoreError(f"the safetensors upload is unreadable: {str(exc)[:200]}") from None
    except CodecError as exc:
        raise StoreError(f"the safetensors upload cannot be encoded: {exc}") from None
    (staging / "model.jpw").write_bytes(package)
    os.replace(upload, staging / "model.safetensors")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:
        raise StoreError(f"{path.name} is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise StoreError(f"{path.name} is not a JSON object")
    return meta


def _inside(folder: Path, name: object, what: str) -> Path:
    """``folder / name`` for a file name from model.json, proven to stay inside ``folder``."""
    path = (folder / check_name(name, what)).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise StoreError(f"{what} {name!r} leads outside the model's folder")
    return path


METRICS = ("accuracy", "kl", "cosine")  # what a report measures, in the first row that has one


def _report(folder: Path, report: str | None) -> dict[str, Any]:
    """A model's measured fidelity per quality, from its report (``jpegweights evaluate``'s
    ``report.json``, or ``jpegweights fidelity``'s): ``{"metric", "float", "qualities": {q:
    {"bytes", "value"}}}``, or {} without one."""
    if not report or not (folder / report).is_file():
        return {}
    try:
        rows = json.loads((folder / report).read_text())["rows"]
        metric = next((m for r in rows for m in METRICS if m in r), None)
        if metric is None:
            return {}
        reference = next((r[metric] for r in rows if r["method"] == "float32"), None)
        qualities = {
            int(r["setting"][1:]): {"bytes": int(r["bytes"]), "value": float(r[metric])}
            for r in rows
            if r["method"] == "jpegweights" and r["setting"].startswith("q")
        }
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        RecursionError,
    ) as exc:  # a report is information: the model serves without it
        log.error(
            json.dumps(
                {"event": "report_unreadable", "model": folder.name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            )
        )
        return {}
    return {"metric": metric, "float": reference, "qualities": dict(sorted(qualities.items()))}


@dataclass(frozen=True)
class LoadOptions:
    """How the store loads a model folder (``from_settings`` takes them from the server's).

    ``min_rows`` pads the forward passes of ``sequential`` models (small, where it costs
    nothing and makes answers independent of their batch); ``trust_code`` lets packages name
    code (a ``python`` architecture, a handler class): only for a store whose files the
    operator trusts, never for uploads. The model's batch limit is measured up to
    ``max_batch_size``. ``compressed_domain`` (``off``, ``auto``, ``all``; the folder's
    model.json may set its own) keeps layers as JPEG coefficients (``handlers.compress``).

    >>> load_model(Path("models/mnist-mlp"), LoadOptions(device="cpu", max_batch_size=64))
    """

    device: str = "cpu"
    min_rows: int = 16
    trust_code: bool = False
    max_batch_size: int = 1
    compressed_domain: str = "off"
    runtime: str = "eager"
    threads: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> LoadOptions:
        return cls(
            device=settings.resolved_device(), min_rows=settings.min_forward_rows, trust_code=settings.trust_code,
            max_batch_size=settings.max_batch_size if settings.batching else 1,
            compressed_domain=settings.compressed_domain, runtime=settings.runtime, threads=settings.torch_threads,
        )  # fmt: skip


Decoded = tuple[dict[str, torch.Tensor], dict[str, Any]]  # a package's (state_dict, manifest)


def load_model(folder: Path, options: LoadOptions = LoadOptions(), decoded: Decoded | None = None) -> Model:
    """Decode a model folder's package (unless ``decoded``, its tensors and manifest as an upload
    was decoded while it arrived) and set up its handler, as ``options`` say. Raises on any problem."""
    device, min_rows = options.device, options.min_rows
    meta = _read_json(folder / "model.json")
    name = check_name(meta.get("name", folder.name), "model name")
    version = check_name(str(meta.get("version", "1")), "model version")
    package = _inside(folder, meta.get("package", "model.jpw"), "package")
    source = _inside(folder, meta.get("source", "model.safetensors"), "source")
    t0 = time.perf_counter()
    mode = meta.get("compressed_domain", options.compressed_domain)
    if mode not in ("off", *handlers.COMPRESSED_DOMAIN):
        raise StoreError(f"compressed_domain must be 'off', 'auto' or 'all', got {str(mode)[:40]!r}")
    state, manifest = decoded or load_package(package, device=device)
    t_decoded = time.perf_counter()
    try:
        sequential = handlers.kind_of(manifest.get("architecture")) == "sequential"
        rows = min_rows if sequential else 1
        handler = handlers.load(manifest, state, device, trust_code=options.trust_code, min_rows=rows)
        report = None if mode == "off" else handlers.compress(handler, package.read_bytes(), state, mode)
        runtime = handlers.accelerate(handler, options.runtime, options.threads)
    except handlers.HandlerError as exc:
        raise StoreError(str(exc)) from None
    uncompressed = sum(math.prod(e["shape"]) * 4 for e in manifest["tensors"].values())
    quality = int(meta.get("quality", manifest.get("config", {}).get("quality", 0)))
    model = Model(
        name=name,
        version=version,
        quality=quality,
        folder=folder,
        package=package,
        source=source if source.is_file() else None,
        manifest={k: manifest[k] for k in ("architecture", "handler") if k in manifest},
        config=_stored_config(manifest),
        handler=handler,
        device=device,
        decode_seconds=t_decoded - t0,  # the package alone: building the handler can take longer (MiniLM's imports)
        uncompressed_bytes=uncompressed,
        report=_report(folder, meta.get("report", "report.json")),
        stamp=folder_stamp(folder),
        max_batch_size=batch_limit(handler, options.max_batch_size),
        resident_bytes=handlers.resident_bytes(handler.module) + getattr(handler.runner, "nbytes", 0),
        compressed_domain=report,
        runtime=runtime,
        digest=sha256_file(package),
        source_digest=_source_digest(source) if source.is_file() else None,
    )
    if runtime.reason is not None:  # ONNX Runtime was asked for (auto on the CPU, or by name)
        log.warning(
            json.dumps({"event": "runtime_fallback", "model": name, "runtime": "eager", "reason": runtime.reason})
        )
    problem = None if model.source is None else model.source_problem()
    if problem is not None:  # it serves its stored package; the operator learns why nothing else
        log.warning(json.dumps({"event": "source_unreadable", "model": name, "error": problem}))
    return model


def _stored_config(manifest: dict[str, Any]) -> EncodeConfig:
    """The settings a package was encoded with (its manifest's ``config``), or the defaults where
    it has none the encoder understands."""
    try:
        return EncodeConfig.from_dict(manifest.get("config", {}))
    except (CodecError, TypeError, ValueError):
        return EncodeConfig()


def folder_stamp(folder: Path) -> tuple:
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir()) if p.is_file())


class ModelStore:
    """The model folders under ``model_dir``, loaded as ``options`` say; packages at other
    qualities cached under ``cache_dir`` (at most ``cache_max_bytes``), encoded through
    ``encodes`` (by default one at a time, four waiting).

    >>> store = ModelStore(Path("models"), Path("/tmp/cache"), LoadOptions(device="cpu"))
    >>> store.load_all()
    """

    def __init__(
        self,
        model_dir: Path,
        cache_dir: Path,
        options: LoadOptions = LoadOptions(),
        cache_max_bytes: int = 1 << 30,
        encodes: EncodeQueue | None = None,
    ):
        self.model_dir, self.cache_dir, self.options = Path(model_dir), Path(cache_dir), options
        self.device = options.device
        self.models: dict[str, Model] = {}
        self.failed: dict[str, str] = {}
        self._etags: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self.cache = QualityCache(self.cache_dir, cache_max_bytes, forget=lambda path: self._etags.pop(path, None))
        self.encodes = encodes or EncodeQueue(workers=1, waiting=4)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore:
        return cls(
            settings.model_dir, settings.cache_dir, LoadOptions.from_settings(settings),
            cache_max_bytes=settings.cache_max_bytes,
            encodes=EncodeQueue(workers=settings.encode_workers, waiting=settings.encode_queue),
        )  # fmt: skip

    def load_all(self) -> None:
        """Load every model folder; one that fails is logged and reported, the others serve.
        The qualities cache's files from earlier runs are counted against its cap."""
        self.cache.scan()
        self.models = self.scan({})

    def scan(self, loaded: dict[str, Model]) -> dict[str, Model]:
        """Every servable folder's model: those in ``loaded`` whose files did not change are
        kept as they are, the others (re)loaded. Failures are recorded in ``failed``."""
        if not self.model_dir.is_dir():
            log.error(json.dumps({"event": "model_dir_missing"}))
            return {}
        import PIL.JpegImagePlugin  # noqa: F401  (import once, so decode times below are the models' own)

        by_folder = {m.folder.name: m for m in loaded.values()}
        models: dict[str, Model] = {}
        owners: dict[str, str] = {}  # model name -> the folder that serves it
        self.failed = {}
        for folder in sorted(p for p in self.model_dir.iterdir() if p.is_dir() and not p.name.startswith(STAGING)):
            try:
                model = by_folder.get(folder.name)
                if model is None or model.stamp != folder_stamp(folder):
                    model = self.load_folder(folder.name)
                if model.name in owners:
                    raise StoreError(f"model name {model.name!r} is already served from folder {owners[model.name]!r}")
            except Exception as exc:  # any broken folder: report it, serve the others
                self.record_failure(folder.name, exc)
                continue
            owners[model.name] = folder.name
            models[model.name] = model
        return models

    def load_folder(self, folder_name: str) -> Model:
        check_name(folder_name, "folder name")
        t0 = time.perf_counter()
        model = load_model(self.model_dir / folder_name, self.options)
        load_ms = round((time.perf_counter() - t0) * 1e3, 2)  # decoding, the handler built, the batch limit measured
        log.info(
            json.dumps(
                {
                    "event": "model_loaded",
                    "model": model.name,
                    "version": model.version,
                    "quality": model.quality,
                    "device": self.device,
                    "decode_ms": round(model.decode_seconds * 1e3, 2),
                    "load_ms": load_ms,
                    "max_batch_size": model.max_batch_size,
                    "resident_weight_bytes": model.resident_bytes,
                }
            )
        )
        return model

    def record_failure(self, folder_name: str, exc: Exception) -> str:
        # what clients see names no filesystem path
        message = f"{type(exc).__name__}: {exc}".replace(str(self.model_dir.resolve()), "<store>").replace(
            str(self.model_dir), "<store>"
        )
        self.failed[folder_name[:128]] = message
        log.error(json.dumps({"event": "model_failed", "model": folder_name[:128], "error": message}))
        return message

    # ------------------------------------------------------------ management (in a worker thread)

    def upload_path(self, name: str) -> Path:
        """Where an upload for model ``name`` is written as it arrives: a file in the store that
        scans never take for a model. The caller removes it if ``publish`` did not take it."""
        check_name(name, "model name")
        return self.model_dir / f"{STAGING}upload-{name}-{os.getpid()}-{time.monotonic_ns()}"

    def publish(self, name: str, upload: Path, version: str | None, decoded: Decoded | None = None) -> Model:
        """Validate an uploaded package (``.jpw``, or safetensors with an ``architecture`` in its
        metadata; the file ``upload``, and ``decoded``, its tensors if it was decoded as it
        arrived) by loading it completely from a staging folder, then move it into place as
        folder ``name``, atomically replacing an older one. Nothing is replaced unless it loads."""
        check_name(name, "model name")
        folder = self.model_dir / name
        old = self.models.get(name)
        if version is None:
            version = str(int(old.version) + 1) if old is not None and old.version.isdigit() else "1"
        check_name(version, "model version")
        with atomic_folder(folder) as staging:
            _stage(upload, staging)
            (staging / "model.json").write_text(
                json.dumps({"name": name, "version": version, "package": "model.jpw", "source": "model.safetensors"})
            )
            # raises on anything that would not serve; trust_code only ever holds for the store's own folders
            model = load_model(staging, dataclasses.replace(self.options, trust_code=False), decoded)
        # the model loaded from the staging folder is the one served: only its paths move
        source = folder / model.source.name if model.source is not None else None
        return dataclasses.replace(
            model, folder=folder, package=folder / model.package.name, source=source, stamp=folder_stamp(folder)
        )

    def delete(self, name: str) -> None:
        folder = self.model_dir / check_name(name, "model name")
        if not folder.is_dir():
            raise ModelNotFound(f"no model folder {name!r} in the store")
        retired = self.model_dir / f"{STAGING}deleted-{name}-{time.monotonic_ns()}"
        os.replace(folder, retired)
        shutil.rmtree(retired, ignore_errors=True)
        self.failed.pop(name, None)

    def get(self, name: str) -> Model:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"unknown model {name!r} (loaded: {known})") from None

    # ------------------------------------------------------------ weights

    def _etag(self, path: Path) -> str:
        st = path.stat()
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a file replaced in place gets a new inode
        cached = self._etags.get(path)
        if cached is None or cached[0] != stamp:
            with open(path, "rb") as f:
                cached = (stamp, '"sha256-' + hashlib.file_digest(f, "sha256").hexdigest() + '"')
            self._etags[path] = cached
        return cached[1]

    def _file(self, model: Model, path: Path, quality: int, held: bool = False) -> WeightFile:
        return WeightFile(path, self._etag(path), path.stat().st_size, quality, model.uncompressed_bytes, held)

    async def weights(self, name: str, quality: int | None, *, hold: bool = False) -> WeightFile:
        """The package at ``quality`` (default: the stored one), encoded once and cached on disk.
        With ``hold``, a cached file stays on disk until ``release`` (``serving`` does both).

        >>> f = await store.weights("mnist-mlp", 50, hold=True)
        >>> store.release(f)
        """
        model = self.get(name)
        if quality is None or quality == model.quality:
            return await asyncio.to_thread(self._file, model, model.package, model.quality)
        path = await self._held_path(model, quality)
        try:
            f = await asyncio.to_thread(self._file, model, path, quality, True)
        except BaseException:  # cancelled too: a leaked hold would keep the file past the cap forever
            self.cache.release(path)
            raise
        if not hold:
            self.release(f)
        return f

    def release(self, f: WeightFile) -> None:
        """Let the qualities cache evict ``f`` again (nothing for the stored package)."""
        if f.held:
            f.held = False
            self.cache.release(f.path)

    @contextlib.asynccontextmanager
    async def serving(self, name: str, quality: int | None) -> AsyncIterator[WeightFile]:
        """``weights(name, quality)``, kept on disk while the block reads it.

        >>> async with store.serving("mnist-mlp", 50) as f:
        ...     data = f.path.read_bytes()
        """
        f = await self.weights(name, quality, hold=True)
        try:
            yield f
        finally:
            self.release(f)

    async def _held_path(self, model: Model, quality: int) -> Path:
        """The cache file of ``model`` at ``quality``, encoded through the queue unless on disk, held."""
        problem = await asyncio.to_thread(model.source_problem)
        if problem is not None:
            raise QualityUnavailable(f"{problem}: only quality {model.quality} is available")
        key = await asyncio.to_thread(model.cache_key)
        path = self.cache.path(key, quality)
        for _ in range(3):  # evicted again before this request's turn came: only with a cap near one file
            if self.cache.hold(path):
                return path
            await self.encodes.run((key, quality), lambda: self._encode_into_cache(model, quality, path))
        raise EncodeQueueFull(
            f"the qualities cache (JPEGWEIGHTS_CACHE_MAX_BYTES={self.cache.max_bytes}) is too small to keep "
            f"model {model.name!r} at quality {quality} for this request",
            retry_after=5,
        )

    async def _encode_into_cache(self, model: Model, quality: int, path: Path) -> None:
        if not await asyncio.to_thread(path.is_file):  # else another replica wrote it meanwhile
            size = await asyncio.to_thread(self._encode, model, quality, path)
            self.cache.add(path, size)

    @staticmethod
    def _encode(model: Model, quality: int, path: Path) -> int:
        """Encode ``model``'s float source at ``quality`` into ``path``; its size. Blocking."""
        from safetensors.torch import load as load_safetensors

        try:
            data = model.source.read_bytes()
        except OSError:  # lost since ``weights`` checked it; say why, rather than the OS's words
            problem = model.source_problem() or f"the float source of model {model.name!r} could not be read"
            raise QualityUnavailable(f"{problem}: only quality {model.quality} is available") from None
        if hashlib.sha256(data).hexdigest() != model.source_digest:  # the cache key would lie about these bytes
            raise QualityUnavailable(
                f"the float source of model {model.name!r} changed since the model was loaded: rescan the store "
                f"(POST /models/rescan) to serve other qualities; quality {model.quality} is available"
            )
        package = encode(load_safetensors(data), model.config.at_quality(quality), **model.manifest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return write_atomic(path, package)  # readers (other replicas too) see no file or the whole one
        except OSError as exc:  # the server's setup, not the request: say so rather than 500
            log.error(json.dumps({"event": "cache_unwritable", "model": model.name, "error": str(exc)}))
            raise CacheUnwritable(
                f"the server cannot write its package cache ({exc.strerror or type(exc).__name__}): "
                f"only quality {model.quality} of model {model.name!r} is available"
            ) from None

    async def tile_image(self, name: str, tensor: str, quality: int | None, atlas: int) -> bytes:
        """One JPEG atlas of a tensor, as stored in the package at ``quality``."""
        async with self.serving(name, quality) as weights:
            stored, manifest = read(await asyncio.to_thread(weights.path.read_bytes))
        entry = manifest["tensors"].get(tensor)
        if entry is None:
            raise ModelNotFound(f"model {name!r} has no tensor {tensor!r}")
        if entry["coding"] != "jpeg":
            raise QualityUnavailable(f"tensor {tensor!r} is stored as {entry['coding']}, not as JPEG")
        if not 0 <= atlas < len(entry["atlases"]):
            raise ModelNotFound(f"tensor {tensor!r} has {len(entry['atlases'])} atlas(es); no atlas {atlas}")
        return stored[entry["atlases"][atlas]["key"]].numpy().tobytes()

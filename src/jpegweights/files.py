"""Files the project writes: atomically, with ordinary modes, and where the cache lives.

>>> write_atomic(Path("/tmp/x.json"), b"{}")
2

Every writer in the package goes through here, so that a reader sees the old file or the whole
new one, never a half-written one, and files get the modes the umask gives (not the 0600 of a
temporary file), so that another user, or a read-only store mounted elsewhere, can read them.
Imports nothing from the rest of the package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

STAGING = ".staging-"  # folders being filled (atomic_folder): never taken for a model by a scan

# The umask at import: the fallback where the kernel does not report the current one.
# (os.umask can only be read by setting it, which would race with other threads' file creation.)
_IMPORT_UMASK = os.umask(0o022)
os.umask(_IMPORT_UMASK)


def umask() -> int:
    """The process's current umask: from ``/proc/self/status`` (Linux 4.7+) where it says,
    else as it was when this module was imported."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _IMPORT_UMASK


def file_mode() -> int:
    """The mode a new regular file gets under the current umask (0644 under the usual 022).

    >>> oct(file_mode())
    '0o644'
    """
    return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on a clean exit it gets ``file_mode()`` and
    is renamed to ``path``, and on any error it is removed and ``path`` is left as it was.

    >>> with atomic_path("out.safetensors") as tmp:
    ...     save_file(state, tmp)
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A new folder beside ``path`` to fill; on a clean exit it gets the umask's mode and takes
    the place of ``path`` (renames: a reader finds the old folder or the whole new one, never half
    of one), and on any error (a full disk) it is removed and ``path`` is left as it was. Its
    name starts with ``STAGING``, which the model store's scans skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}{path.name}-", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~umask())
        retired = path.with_name(f"{STAGING}retired-{staging.name[len(STAGING) :]}")
        if path.exists():
            os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> int:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename); return its size."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return len(data)


def cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/jpegweights/...``, or ``~/.cache/jpegweights/...`` (not created)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "jpegweights", *parts)

"""The local cache of downloaded packages, and the pure logic both clients share.

    <cache_dir>/<host_port>/<model>/<quality>.jpw        verified packages
    <cache_dir>/<host_port>/<model>/<quality>.json       {"etag", "quality", "size"}
    <cache_dir>/<host_port>/<model>/<quality>.jpw.part   an unfinished download (+ .part.json: its ETag)

A package enters the cache only by an atomic rename after its SHA-256 matched the server's ETag,
so an interrupted or corrupted transfer never looks like a cached one. Partial files survive
process restarts and resume with ``Range``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from jpegweights.files import cache_dir, file_mode, write_atomic

from .errors import IntegrityError

ETAG_RE = re.compile(r'^"sha256-([0-9a-f]{64})"$')
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # no "/", no leading ".", no ".."


def check_name(name: object) -> str:
    """A model name that is safe as one path component, or ``ValueError``."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"invalid model name {str(name)[:80]!r}: letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def default_cache_dir() -> Path:
    """``$JPEGWEIGHTS_CACHE``, else ``files.cache_dir("client")`` (``~/.cache/jpegweights/client``)."""
    if "JPEGWEIGHTS_CACHE" in os.environ:
        return Path(os.environ["JPEGWEIGHTS_CACHE"])
    return cache_dir("client")


def sha256_of(etag: str) -> str:
    m = ETAG_RE.match(etag or "")
    if not m:
        raise IntegrityError(f"server sent no SHA-256 ETag (got {etag!r}); cannot verify the download")
    return m.group(1)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Entry:
    """Where one (server, model, quality) lives in the cache."""

    path: Path

    @classmethod
    def of(cls, cache_dir: Path, base_url: str, model: str, quality: int | None) -> Entry:
        """The entry's paths, proven to lie inside ``cache_dir`` (``ValueError`` otherwise)."""
        check_name(model)
        if quality is not None and (
            isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100
        ):
            raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
        host = re.sub(r"[^A-Za-z0-9.-]", "_", urlsplit(base_url).netloc).strip(".") or "local"
        root = Path(cache_dir).resolve()
        path = (root / host / model / f"{'default' if quality is None else f'q{quality}'}.jpw").resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"cache path {path} would lie outside the cache {root}")
        return cls(path)

    @property
    def meta(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")

    @property
    def part_meta(self) -> Path:
        return self.path.with_name(self.path.name + ".part.json")

    def cached_etag(self) -> str | None:
        """The ETag of a complete cached package, if one exists and still matches it."""
        if not (self.path.is_file() and self.meta.is_file()):
            return None
        etag = json.loads(self.meta.read_text()).get("etag", "")
        if ETAG_RE.match(etag) and file_sha256(self.path) == sha256_of(etag):
            return etag
        return None

    def partial(self) -> tuple[int, str] | None:
        """(bytes already received, their ETag) of an unfinished download."""
        if self.part.is_file() and self.part_meta.is_file():
            etag = json.loads(self.part_meta.read_text()).get("etag")
            if etag:
                return self.part.stat().st_size, etag
        return None

    def start_part(self, etag: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.part.write_bytes(b"")
        write_atomic(self.part_meta, json.dumps({"etag": etag}).encode())  # never half an ETag after a crash

    def discard_part(self) -> None:
        self.part.unlink(missing_ok=True)
        self.part_meta.unlink(missing_ok=True)

    def check_part(self, etag: str, digest: str) -> None:
        """Raise ``IntegrityError`` (and discard the part) unless ``digest``, the finished part's
        SHA-256, is what the server's ETag says."""
        if digest != sha256_of(etag):
            self.discard_part()
            raise IntegrityError(
                f"downloaded package has SHA-256 {digest[:16]}…, server's ETag says {sha256_of(etag)[:16]}…; discarded"
            )

    def commit(self, etag: str, quality: int | None, digest: str) -> Path:
        """Rename the finished part, of SHA-256 ``digest``, into place (atomic) once that matches its ETag."""
        self.check_part(etag, digest)
        size = self.part.stat().st_size
        # the part file is appended to across restarts, so it is no atomic_path: the rename is
        # what makes the package appear whole, with the umask's mode like every file we write
        os.chmod(self.part, file_mode())
        os.replace(self.part, self.path)
        write_atomic(self.meta, json.dumps({"etag": etag, "quality": quality, "size": size}).encode())
        self.part_meta.unlink(missing_ok=True)
        return self.path

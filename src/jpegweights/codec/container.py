"""The ``.jpw`` container: a plain safetensors file, parsed here with the checks we need.

Writing goes through ``safetensors.torch.save`` (deterministic: tensors sorted, header
padded). Reading is our own strict parser so that every malformed input becomes a specific
``FormatError``, stored tensors are zero-copy views of the input bytes, and a file is never
read past its header before that header has been checked.

Integrity: ``__metadata__`` holds the manifest (a JSON string) under ``jpegweights`` and,
under ``jpegweights.sha256``, the SHA-256 of the manifest string's UTF-8 bytes followed by
the data section. Readers compute it beside parsing (and ``decode`` beside decoding), and
return nothing before it matches; on a mismatch, the ``ChecksumError`` is what they raise.

Packed (version 4, ``EncodeConfig(compact=True)``): for small models the JSON header is much
of the file, so it is deflated. The file is still plain safetensors, with two uint8 tensors:
``jpegweights/index``, the zlib-compressed JSON ``{"manifest": ..., "tensors": ...}`` (the
stored tensors' safetensors entries, offsets into the data tensor) zero-padded to 8 bytes, and
``jpegweights/data``, the stored tensors' bytes laid out as above. ``__metadata__`` holds
``jpegweights.packed: "zlib"`` and the SHA-256 of the whole data section. The index inflates
to at most ``MAX_HEADER_BYTES``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ChecksumError, FormatError, HeaderTooLargeError, ManifestError, TruncatedError, VersionError, show

FORMAT = "jpegweights"
FORMAT_VERSION = 3
# version 3 added float16 storage for raw float32/float64 tensors; version 4 is the packed
# container, with per-tensor ranges stored once
READ_VERSIONS = (2, 3, 4)
PACKED_VERSION = 4
MAX_HEADER_BYTES = 16 * 1024 * 1024
# A packed index's JSON per deflated byte: bundled models' indexes inflate 3-12x. Parsed JSON
# takes about 17 bytes of memory per byte, so a few kilobytes may not become gigabytes.
MAX_INFLATION = 64
INFLATION_ALLOWANCE = 1 << 20
METADATA_KEY = "jpegweights"
DIGEST_KEY = "jpegweights.sha256"
PACKED_KEY = "jpegweights.packed"
INDEX, DATA = "jpegweights/index", "jpegweights/data"
MAX_RANK = 16
MAX_NUMEL = 1 << 48  # no tensor of more values than this (1 PiB of uint8) is ever honest here
MAX_INT_DIGITS = 20  # JSON integers longer than this are refused (2**64 has 20 digits)
PARALLEL_DIGEST_BYTES = 1 << 20  # from this size the digest runs beside the parsing

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


# ---------------------------------------------------------------- strict JSON


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate key {show(key)} in a JSON object")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise FormatError(f"JSON integer of {len(text)} digits (at most {MAX_INT_DIGITS} are allowed)")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FormatError(f"JSON number {show(text)} is out of range")
    return value


def _no_constant(text: str) -> Any:
    raise FormatError(f"{text} is not valid JSON")


# Where a lone surrogate could hide: re-encoding the whole value to look for one cost more than
# parsing it on a manifest with non-ASCII text (MiniLM's carries its tokenizer's vocabulary)
_SURROGATE_ESCAPE = (re.compile(rb"\\u[dD][89a-fA-F]"), re.compile(r"\\u[dD][89a-fA-F]"))


def loads(text: bytes | str, what: str, error: type[FormatError] = FormatError) -> Any:
    """``json.loads`` that refuses duplicate keys, NaN/Infinity, huge integers and deep nesting."""
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
        if _SURROGATE_ESCAPE[isinstance(text, str)].search(text):
            # a \ud800 escape decodes to a lone surrogate, which is not text: refuse it here
            # rather than fail later when a name is hashed, printed or logged
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except FormatError as exc:
        raise error(f"{what}: {exc}") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    except UnicodeEncodeError:
        raise error(f"{what} holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode text") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{what} is not valid JSON: {exc}") from None


def check_int(value: Any, what: str, lo: int = 0, hi: int = MAX_NUMEL, error: type[FormatError] = FormatError) -> int:
    """``value`` as an int in ``lo..hi``; bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise error(f"{what} must be an integer in {lo}..{hi}, got {show(value)}")
    return value


def check_shape(value: Any, what: str, error: type[FormatError] = FormatError) -> tuple[int, ...]:
    """A list of at most ``MAX_RANK`` non-negative ints whose non-zero product is at most ``MAX_NUMEL``."""
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise error(f"{what} must be a list of at most {MAX_RANK} integers, got {show(value)}")
    shape = tuple(check_int(d, f"{what} dimension", 0, MAX_NUMEL, error) for d in value)
    if math.prod(d for d in shape if d) > MAX_NUMEL:
        raise error(f"{what} {list(shape)} has more than 2**48 values")
    return shape


# ---------------------------------------------------------------- writing


def digest(manifest_text: str, body: bytes | memoryview) -> str:
    h = hashlib.sha256(manifest_text.encode("utf-8"))
    h.update(body)
    return h.hexdigest()


def _lay_out(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], int]:
    """Safetensors entries in their order, and where the last ends: by decreasing item size
    (so every one is aligned), then by name."""
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    entries, position = {}, 0
    for name in order:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        entries[name] = {
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [position, position + nbytes],
        }
        position += nbytes
    return entries, position


def _header(metadata: dict[str, str], entries: dict[str, Any]) -> bytes:
    head = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head


def write(
    tensors: dict[str, torch.Tensor], manifest: dict[str, Any], packed: bool = False, consume: bool = False
) -> bytes:
    """A safetensors file holding ``tensors`` with the manifest and its digest in ``__metadata__``
    (or, ``packed``, both deflated into the ``jpegweights/index`` tensor).

    Deterministic: the header is compact JSON padded with spaces to a multiple of 8 bytes, as
    safetensors' own writer does. The file is assembled in one buffer, each tensor's bytes
    copied once (the digest, of fixed length, is written into the header last); ``consume``
    empties ``tensors`` as they are copied, so that the stored bytes are never held twice.
    """
    text = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
    entries, size = _lay_out(tensors)
    placeholder = "0" * 64
    if packed:
        index = json.dumps({"manifest": manifest, "tensors": entries}, separators=(",", ":"), allow_nan=False)
        deflated = zlib.compress(index.encode(), 9)
        deflated += bytes(-len(deflated) % 8)  # the data tensor, and so every stored tensor, stays aligned
        outer = {INDEX: {"dtype": "U8", "shape": [len(deflated)], "data_offsets": [0, len(deflated)]}}
        outer[DATA] = {"dtype": "U8", "shape": [size], "data_offsets": [len(deflated), len(deflated) + size]}
        metadata, prefix, header_entries = {PACKED_KEY: "zlib", DIGEST_KEY: placeholder}, deflated, outer
    else:
        metadata, prefix, header_entries = {METADATA_KEY: text, DIGEST_KEY: placeholder}, b"", entries
    head = _header(metadata, header_entries)
    out = bytearray(len(head) + len(prefix) + size)
    view, start = memoryview(out), len(head) + len(prefix)
    view[len(head) : start] = prefix
    for name, entry in entries.items():
        t = tensors.pop(name) if consume else tensors[name]
        begin, end = (start + o for o in entry["data_offsets"])
        if end > begin:
            view[begin:end] = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        del t
    body = view[len(head) :]
    metadata[DIGEST_KEY] = digest("" if packed else text, body)
    out[: len(head)] = _header(metadata, header_entries)  # the same length: the digest replaced its placeholder
    del view, body
    return bytes(out)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: where each stored tensor lies in the data section."""

    entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]  # name -> (dtype, shape, begin, end)
    metadata: dict[str, str]
    data_bytes: int


def header_length(prefix: bytes | memoryview) -> int:
    """The JSON header's length from a file's first 8 bytes, within ``MAX_HEADER_BYTES``."""
    (n,) = struct.unpack("<Q", bytes(prefix[:8]))
    if n > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"header of {n} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    return n


def parse_header(prefix: bytes | memoryview, total: int | None) -> tuple[Header, int]:
    """Check the 8-byte length and the JSON header; ``total`` is the file's size in bytes, or
    None while it is still arriving (the file then ends where its tensors do).

    ``prefix`` holds at least the first ``min(total, 8 + header length)`` bytes. Returns the
    header and its length. Nothing past the header is needed, so a file is never read whole
    before its header has been checked.
    """
    if total is not None and total < 8:
        raise TruncatedError(f"file is {total} bytes, shorter than the 8-byte header length")
    n = header_length(prefix)
    if total is not None and 8 + n > total:
        raise TruncatedError(f"header claims {n} bytes but only {total - 8} follow")
    header = loads(bytes(prefix[8 : 8 + n]), "header")
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("__metadata__ must be an object of strings")
    entries = _entries(header)
    data_bytes = max((end for *_, end in entries.values()), default=0)
    body = data_bytes if total is None else total - 8 - n
    if body < data_bytes:
        raise TruncatedError(f"tensors need {data_bytes} bytes of data but the file has {body}")
    if body > data_bytes:
        raise FormatError(f"{body - data_bytes} trailing bytes after the last tensor")
    return Header(entries, metadata, data_bytes), n


def is_package(header: Header) -> bool:
    """Whether a safetensors header is a jpegweights package's (plain or packed)."""
    return METADATA_KEY in header.metadata or PACKED_KEY in header.metadata


def _entries(header: dict[str, Any]) -> dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]:
    """Check safetensors' rules: known dtypes, sizes that match, no holes, no overlap."""
    spans = []
    for name, info in header.items():
        try:
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise FormatError("header entry must have exactly dtype, shape, data_offsets")
            dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
            if dtype is None:
                raise FormatError(f"unknown dtype {show(info['dtype'])}")
            shape = check_shape(info["shape"], "shape")
            offsets = info["data_offsets"]
            if not isinstance(offsets, list) or len(offsets) != 2:
                raise FormatError("data_offsets must be [begin, end]")
            begin, end = (check_int(o, "offset", 0, 1 << 62) for o in offsets)
            if end < begin or math.prod(shape) * dtype.itemsize != end - begin:
                raise FormatError(f"{end - begin} bytes do not hold {info['dtype']}{list(shape)}")
        except FormatError as exc:  # the tensor's name is shown only when something is wrong
            raise FormatError(f"tensor {show(name, 200)}: {exc}") from None
        spans.append((begin, end, name, dtype, shape))
    spans.sort()
    position = 0
    for begin, end, name, _, _ in spans:
        if begin != position:
            raise FormatError(f"tensor {show(name, 200)}: data at byte {begin}, expected {position} (hole or overlap)")
        position = end
    return {name: (dtype, shape, begin, end) for begin, end, name, dtype, shape in spans}


def views(header: Header, body: memoryview) -> dict[str, torch.Tensor]:
    """Stored tensors as zero-copy, read-only views of the data section."""
    tensors = {}
    with warnings.catch_warnings():  # read-only input buffer: we never write to these views
        warnings.simplefilter("ignore", UserWarning)
        for name, (dtype, shape, begin, end) in header.entries.items():
            flat = (
                torch.frombuffer(body, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
                if end > begin
                else torch.empty(0, dtype=dtype)
            )
            tensors[name] = flat.view(shape)
    return tensors


Verify = Callable[[], None]


def _start_digest(expected: str, manifest_text: str, body: memoryview) -> Verify:
    """Start checking the digest over ``manifest_text`` and ``body``; the returned ``verify()``
    raises ``ChecksumError`` on a mismatch.

    From ``PARALLEL_DIGEST_BYTES`` of data the digest is computed on another thread (hashlib
    releases the GIL), so that parsing, checking and decoding go on beside it: on 2 cores that
    hides most of it (MiniLM's 17 MB take 10 ms)."""
    if len(body) < PARALLEL_DIGEST_BYTES:
        actual = digest(manifest_text, body)
        result = lambda: actual  # noqa: E731
    else:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jpegweights-digest")
        result = pool.submit(digest, manifest_text, body).result
        pool.shutdown(wait=False)

    def verify() -> None:
        if result() != expected:
            raise ChecksumError("SHA-256 digest mismatch: the file is corrupt or was altered")

    return verify


@contextlib.contextmanager
def digest_wins(verify: Verify) -> Iterator[None]:
    """Whatever the block raises gives way to a digest mismatch, if there is one: an error
    that corruption caused is reported as corruption. (It does not verify on success.)"""
    try:
        yield
    except BaseException:
        verify()
        raise


def _parse_manifest(text: str) -> dict[str, Any]:
    manifest = loads(text, "manifest", ManifestError)
    if not isinstance(manifest, dict):
        raise ManifestError("manifest is not a JSON object")
    return manifest


def plain_digest(header: Header) -> tuple[str, str]:
    """A plain (not packed) file's manifest text and the digest its metadata expects."""
    text = header.metadata.get(METADATA_KEY)
    if text is None:
        raise ManifestError(f"no '{METADATA_KEY}' manifest in __metadata__: not a jpegweights file")
    expected = header.metadata.get(DIGEST_KEY)
    if expected is None:  # version 1 had no digest: say which version it is rather than "corrupt"
        manifest = _parse_manifest(text)
        if manifest.get("version") not in READ_VERSIONS:
            raise VersionError(
                f"format version {show(manifest.get('version'))} is not supported "
                f"(this reader knows {READ_VERSIONS}); re-encode the float weights"
            )
        raise ChecksumError(f"no '{DIGEST_KEY}' digest in __metadata__")
    return text, expected


def plain_manifest(text: str) -> dict[str, Any]:
    """A plain file's manifest, parsed (a version 4 manifest belongs in a packed file)."""
    manifest = _parse_manifest(text)
    if manifest.get("version") == PACKED_VERSION:
        raise ManifestError(f"a version {PACKED_VERSION} manifest must be packed (in {INDEX})")
    return manifest


def _manifest_of(header: Header, body: memoryview) -> tuple[dict[str, Any], Verify]:
    """The manifest of a plain (not packed) file, with the digest over it and the data section
    under way."""
    text, expected = plain_digest(header)
    verify = _start_digest(expected, text, body)
    with digest_wins(verify):
        manifest = plain_manifest(text)
    return manifest, verify


def _inflate(deflated: bytes) -> dict[str, Any]:
    """The packed index: at most ``MAX_INFLATION`` bytes of JSON per packed byte beyond
    ``INFLATION_ALLOWANCE``, and ``MAX_HEADER_BYTES`` in all, then under 8 zero bytes."""
    limit = min(MAX_HEADER_BYTES, MAX_INFLATION * len(deflated) + INFLATION_ALLOWANCE)
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(deflated, limit)
    except zlib.error as exc:
        raise FormatError(f"the packed index is not zlib data: {exc}") from None
    if inflater.unconsumed_tail:
        raise HeaderTooLargeError(
            f"the packed index of {len(deflated):,} bytes inflates to more than {limit:,} "
            f"({MAX_INFLATION} per byte beyond {INFLATION_ALLOWANCE >> 20} MiB, {MAX_HEADER_BYTES >> 20} MiB in all)"
        )
    if not inflater.eof:
        raise TruncatedError("the packed index ends before its zlib stream does")
    if len(inflater.unused_data) >= 8 or any(inflater.unused_data):
        raise FormatError(f"{len(inflater.unused_data)} bytes after the packed index (at most 7 zero bytes may pad it)")
    index = loads(text, "packed index")
    if (
        not isinstance(index, dict)
        or set(index) != {"manifest", "tensors"}
        or not all(isinstance(v, dict) for v in index.values())
    ):
        raise FormatError("the packed index must be a JSON object of exactly 'manifest' and 'tensors' objects")
    return index


def packed_index_span(header: Header) -> tuple[int, int]:
    """Where a packed file's index lies in its data section, ``(begin, end)``, the rest being
    the data tensor; its digest must be in the metadata."""
    if header.metadata[PACKED_KEY] != "zlib":
        raise FormatError(f"unknown packing {show(header.metadata[PACKED_KEY])} (this reader knows 'zlib')")
    if METADATA_KEY in header.metadata or set(header.entries) != {INDEX, DATA}:
        raise FormatError(
            f"a packed file holds exactly the tensors {INDEX} and {DATA}, and no '{METADATA_KEY}' metadata"
        )
    (dtype_i, shape_i, begin_i, end_i), (dtype_d, shape_d, *_) = header.entries[INDEX], header.entries[DATA]
    if dtype_i != torch.uint8 or dtype_d != torch.uint8 or len(shape_i) != 1 or len(shape_d) != 1 or begin_i != 0:
        raise FormatError(f"{INDEX} and {DATA} must be 1-D uint8 tensors, the index first")
    if DIGEST_KEY not in header.metadata:
        raise ChecksumError(f"no '{DIGEST_KEY}' digest in __metadata__")
    return begin_i, end_i


def packed_index(header: Header, index_bytes: bytes | memoryview) -> tuple[Header, dict[str, Any]]:
    """A packed file's stored tensors (offsets into its data tensor) and manifest, from its
    index's bytes (``packed_index_span``)."""
    index = _inflate(bytes(index_bytes))
    entries = _entries(index["tensors"])
    data_bytes = max((end for *_, end in entries.values()), default=0)
    _, _, begin_d, end_d = header.entries[DATA]
    if data_bytes != end_d - begin_d:
        raise FormatError(f"the packed index lays out {data_bytes} bytes of tensors, {DATA} holds {end_d - begin_d}")
    manifest = index["manifest"]
    if manifest.get("version") != PACKED_VERSION:
        raise VersionError(
            f"a packed file holds a version {PACKED_VERSION} manifest, got version {show(manifest.get('version'))}"
        )
    return Header(entries, {}, data_bytes), manifest


def _unpack(header: Header, body: memoryview) -> tuple[dict[str, torch.Tensor], dict[str, Any], Verify]:
    """A packed file's stored tensors and manifest, with the digest over its data under way."""
    begin_i, end_i = packed_index_span(header)
    verify = _start_digest(header.metadata[DIGEST_KEY], "", body)
    with digest_wins(verify):
        inner, manifest = packed_index(header, body[begin_i:end_i])
    return views(inner, body[header.entries[DATA][2] :]), manifest, verify


def _open(header: Header, body: memoryview) -> tuple[dict[str, torch.Tensor], dict[str, Any], Verify]:
    if PACKED_KEY in header.metadata:
        return _unpack(header, body)
    manifest, verify = _manifest_of(header, body)
    return views(header, body), manifest, verify


def read_pending(data: bytes | bytearray | memoryview) -> tuple[dict[str, torch.Tensor], dict[str, Any], Verify]:
    """``read`` that returns while the digest is still being checked: ``(stored, manifest,
    verify)``. Every other check still applies; run what follows ``with digest_wins(verify):``
    and trust nothing of it until that block has ended."""
    view = memoryview(data).cast("B")
    header, n = parse_header(view[: 8 + MAX_HEADER_BYTES], len(view))
    return _open(header, view[8 + n :])


def read(data: bytes | bytearray | memoryview) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse a container held in memory: (stored tensors as views of ``data``, the manifest),
    its digest checked."""
    stored, manifest, verify = read_pending(data)
    verify()
    return stored, manifest


def read_file_pending(
    path: str | os.PathLike, max_bytes: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any], Verify]:
    """Parse a container on disk, reading the header first and the data only once it is checked;
    the digest is still being checked, as with ``read_pending``.

    Refuses anything but a regular file (a FIFO or a device would block or never end) and,
    with ``max_bytes``, files larger than that.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FormatError(f"cannot open the package: {exc.strerror}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError("the package is not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FormatError(f"the package is {st.st_size} bytes, over the limit of {max_bytes}")
        prefix = _read_exactly(f, min(st.st_size, 8))
        if len(prefix) == 8:
            n = struct.unpack("<Q", prefix)[0]
            prefix += _read_exactly(f, min(n, MAX_HEADER_BYTES, st.st_size - 8))
        header, n = parse_header(prefix, st.st_size)
        body = bytearray(header.data_bytes)
        view, got = memoryview(body), 0
        while got < len(body):
            step = f.readinto(view[got:])
            if not step:
                break
            got += step
        if got != len(body) or f.read(1):
            raise TruncatedError("the package changed size while it was read")
    return _open(header, memoryview(body))


def read_file(path: str | os.PathLike, max_bytes: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``read_file_pending``, its digest checked."""
    stored, manifest, verify = read_file_pending(path, max_bytes)
    verify()
    return stored, manifest


def _read_exactly(f: Any, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = f.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)

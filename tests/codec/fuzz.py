"""A seeded fuzzer for the ``.jpw`` reader: every mutated package decodes or raises a ``CodecError``.
A package that decodes also goes through the compressed domain's reader (``load_matrices``).

    python -m tests.codec.fuzz --cases 3000 --seed 1          # from the repository root
    python -m tests.codec.fuzz --seed 1 --replay 1234 --write /tmp/case.jpw   # one case, with its traceback

Case ``i`` of seed ``s`` mutates ``attacks/codec/good.jpw`` with ``random.Random(f"{s}:{i}")``
alone, so a case is reproduced from its two numbers. Every package carries a SHA-256 digest,
so random byte flips are nearly always refused by the digest check; most strategies therefore
mutate the way an attacker would, then re-serialize with a correct digest:

- ``struct``: the container is parsed (``codec.container.read``), the manifest and/or the stored
  tensors edited (values of random types at random paths, copies, deletions, additions, integer
  nudges, atlas and entry shuffles, dtype/shape/content changes, JPEG streams truncated, flipped,
  re-headed or replaced), then written back with ``codec.container.write``;
- ``text``: the manifest's JSON text is edited (odd number tokens, NaN, duplicate keys, deep
  nesting, lone surrogates, garbage) and the digest recomputed;
- ``header``: the raw safetensors header (8-byte length, then JSON) is edited and re-packed;
- ``raw``: bytes of the whole file flipped, inserted, deleted or truncated;
- ``packed``: the packed container (version 4), from a struct mutation or with its deflated
  index edited, re-signed.

Each case runs in a child process (``--worker``) that imports torch once and prints one JSON
line per finished case. The parent watches it: no line for ``hang_s`` seconds is a hang (the
child is killed and a new one continues with the next case); a child that dies is a crash of
the case it was running; a case whose peak RSS grows by more than ``max_mib`` is a memory
failure (measured in the child with ``/proc/self/clear_refs`` and ``VmHWM``; the parent also
kills a child whose RSS runs far past the bound). Anything the reader raises that is not a
``CodecError`` is an escape. The exit status is 0 only when there were no escapes, hangs,
memory failures or crashes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import queue
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GOOD = ROOT / "attacks" / "codec" / "good.jpw"
MIB = 1 << 20
STARTUP_S = 300.0  # importing torch on a busy machine can be slow; the hang clock starts after


# ================================================================ mutations
#
# Everything here is a pure function of (rng, the good package): no global randomness, no
# iteration over sets, so a case is the same on every machine and in every process.

INTERESTING_INTS = [
    0, 1, -1, 2, 3, 7, 8, 9, 15, 16, 17, 27, 28, 29, 63, 64, 65, 255, 256, 65499, 65500, 65501, 65535, 65536,
    2**31 - 1, 2**31, 2**32, 2**48, 2**48 + 1, 2**53 + 1, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
    -(2**31), -(2**63), 10**19, 10**20, -(10**20), 10**25,
]  # fmt: skip
INTERESTING_FLOATS = [
    0.0,
    -0.0,
    0.5,
    1.0,
    16.0,
    -1.5,
    1e-310,
    5e-324,
    1e308,
    -1e308,
    3.4e38,
    3.5e38,
    65504.0,
    65520.0,
    1e-8,
]
INTERESTING_STRINGS = [
    "", "jpeg", "int8", "raw", "rows", "matrix", "standard", "flat", "F32", "F16", "BF16", "F64", "U8", "I8", "I16",
    "I32", "I64", "BOOL", "F8", "jpegweights", "__metadata__", "key", "atlases", "\ud800", "\udfff\ud800", "\x00",
    "é", "💥", "\u202e", "1", "null", "rows:28x28", "a" * 5000, "../../etc/passwd",
]  # fmt: skip
FIELD_NAMES = [
    "coding", "dtype", "shape", "key", "scale", "offset", "quality", "qtable", "layout", "tile", "atlases", "first",
    "count", "grid", "height", "width", "row", "col", "format", "version", "tensors", "extra", "__proto__", "",
]  # fmt: skip
WEIRD_TOKENS = [
    "NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400", "1e-400", "-0", "-0.0", "0.0e0", "01", "0x10",
    "+1", ".5", "1.", "1e", "true", "false", "null", "tru", "[]", "{}", '""', '"\\ud800"', '"\\udfff"', '"\\u0000"',
    "1" * 20, "1" * 21, "-" + "9" * 20, "1" * 25, "1" * 4301, "9" * 100000, "1.5e308", "4.9e-324", "2.5e-324",
]  # fmt: skip


def _mutable(x: Any) -> Any:
    return json.loads(json.dumps(x))


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) below ``obj``, in document order."""
    out: list[tuple] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        p = (*prefix, k)
        out.append(p)
        out.extend(_paths(v, p))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _set(obj: Any, path: tuple, value: Any) -> None:
    _get(obj, path[:-1])[path[-1]] = value


def _show_path(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _short(value: Any, limit: int = 50) -> str:
    text = (
        json.dumps(value)
        if not isinstance(value, str) or len(value) < 200
        else f'"{value[:10]}..."({len(value)} chars)'
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def random_json(rng: random.Random, pool: list[Any], depth: int = 0) -> Any:
    """A JSON value of a random type; ``pool`` holds values from the package worth reusing."""
    kind = rng.choice(["int", "int", "float", "bool", "none", "str", "str", "list", "dict", "deep", "pool", "pool"])
    if kind == "int":
        return rng.choice(INTERESTING_INTS) if rng.random() < 0.7 else rng.randint(-1000, 1000)
    if kind == "float":
        return rng.choice(INTERESTING_FLOATS) if rng.random() < 0.7 else rng.uniform(-1e6, 1e6)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "str":
        return (
            rng.choice(INTERESTING_STRINGS)
            if rng.random() < 0.6
            else rng.choice([s for s in pool if isinstance(s, str)] or [""])
        )
    if kind == "list" and depth < 3:
        return [random_json(rng, pool, depth + 1) for _ in range(rng.choice([0, 1, 2, 2, 3, 5]))]
    if kind == "dict" and depth < 3:
        return {rng.choice(FIELD_NAMES): random_json(rng, pool, depth + 1) for _ in range(rng.choice([0, 1, 2, 4]))}
    if kind == "deep":
        return _nested(rng.choice([2, 10, 100, 400]), rng.choice([1, "x", None, []]))
    return copy.deepcopy(rng.choice(pool)) if pool else None


def _pool(manifest: Any, stored: dict[str, Any]) -> list[Any]:
    """Values worth transplanting: every node of the manifest and every stored key."""
    return [_get(manifest, p) for p in _paths(manifest)] + list(stored)


# ---------------------------------------------------------------- manifest edits (struct)


def m_value(rng, manifest, stored) -> str:
    paths = _paths(manifest)
    path = rng.choice(paths)
    value = random_json(rng, _pool(manifest, stored))
    _set(manifest, path, value)
    return f"manifest {_show_path(path)} = {_short(value)}"


def m_copy(rng, manifest, stored) -> str:
    paths = _paths(manifest)
    path, source = rng.choice(paths), rng.choice(paths)
    _set(manifest, path, copy.deepcopy(_get(manifest, source)))
    return f"manifest {_show_path(path)} = copy of {_show_path(source)}"


def m_delete(rng, manifest, stored) -> str:
    path = rng.choice(_paths(manifest))
    parent = _get(manifest, path[:-1])
    del parent[path[-1]]
    return f"manifest delete {_show_path(path)}"


def m_add(rng, manifest, stored) -> str:
    containers = [()] + [p for p in _paths(manifest) if isinstance(_get(manifest, p), (dict, list))]
    path = rng.choice(containers)
    node = _get(manifest, path)
    value = random_json(rng, _pool(manifest, stored))
    if isinstance(node, dict):
        key = rng.choice(FIELD_NAMES + list(stored)[:3] + ["m.weight", "h.bias"])
        node[key] = value
        return f"manifest add {_show_path((*path, key))} = {_short(value)}"
    position = rng.randint(0, len(node))
    node.insert(position, value)
    return f"manifest insert {_show_path(path)}[{position}] = {_short(value)}"


def m_nudge(rng, manifest, stored) -> str:
    ints = [p for p in _paths(manifest) if type(_get(manifest, p)) is int]
    path = rng.choice(ints)
    old = _get(manifest, path)
    new = rng.choice(
        [
            old + 1,
            old - 1,
            old + 2,
            old - 8,
            old + 8,
            old + 16,
            old * 2,
            old // 2,
            -old,
            0,
            old + 28,
            old - 28,
            old + 65500,
        ]
    )
    _set(manifest, path, new)
    return f"manifest nudge {_show_path(path)}: {old} -> {new}"


def m_atlases(rng, manifest, stored) -> str:
    entries = [
        (n, e)
        for n, e in manifest["tensors"].items()
        if isinstance(e, dict) and isinstance(e.get("atlases"), list) and e["atlases"]
    ]
    name, entry = rng.choice(entries)
    atlases = entry["atlases"]
    op = rng.choice(["duplicate", "duplicate_rekey", "remove", "reverse", "swap_keys", "move", "clear", "share_key"])
    if op == "duplicate":
        i = rng.randrange(len(atlases))
        atlases.insert(rng.randint(0, len(atlases)), copy.deepcopy(atlases[i]))
        return f"{name}: duplicate atlas {i}"
    if op == "duplicate_rekey":
        i = rng.randrange(len(atlases))
        dup = copy.deepcopy(atlases[i])
        dup["key"] = rng.choice(list(stored))
        atlases.append(dup)
        return f"{name}: duplicate atlas {i} with key {dup['key']!r}"
    if op == "remove":
        i = rng.randrange(len(atlases))
        del atlases[i]
        return f"{name}: remove atlas {i}"
    if op == "reverse":
        atlases.reverse()
        return f"{name}: reverse the atlas list"
    if op == "swap_keys" and len(atlases) > 1:
        i, j = rng.sample(range(len(atlases)), 2)
        atlases[i]["key"], atlases[j]["key"] = atlases[j]["key"], atlases[i]["key"]
        return f"{name}: swap the keys of atlases {i} and {j}"
    if op == "move" and len(entries) > 1:
        other_name, other = rng.choice([(n, e) for n, e in entries if n != name])
        i = rng.randrange(len(atlases))
        other["atlases"].append(atlases.pop(i))
        return f"{name}: move atlas {i} to {other_name}"
    if op == "share_key" and len(atlases) > 1:
        i, j = rng.sample(range(len(atlases)), 2)
        atlases[i]["key"] = atlases[j]["key"]
        return f"{name}: atlas {i} reuses the key of atlas {j}"
    atlases.clear()
    return f"{name}: empty atlas list"


def m_entries(rng, manifest, stored) -> str:
    tensors = manifest["tensors"]
    names = list(tensors)
    op = rng.choice(["rename", "duplicate", "delete", "swap", "coding", "not_dict", "empty", "reorder"])
    name = rng.choice(names)
    if op == "rename":  # harmless: entry names are the output's keys
        new = rng.choice(["renamed", "", "h.bias/q", "\ud800", "a" * 300, "m.weight/jpeg/0", "__metadata__"])
        manifest["tensors"] = (
            {(new if n == name else n): e for n, e in tensors.items()} if new not in tensors else tensors
        )
        return f"rename entry {name!r} to {new!r}"
    if op == "duplicate":
        tensors[name + ".copy"] = copy.deepcopy(tensors[name])
        return f"duplicate entry {name!r}"
    if op == "delete":
        del tensors[name]
        return f"delete entry {name!r}"
    if op == "swap" and len(names) > 1:
        a, b = rng.sample(names, 2)
        tensors[a], tensors[b] = tensors[b], tensors[a]
        return f"swap entries {a!r} and {b!r}"
    if op == "coding":
        coding = rng.choice(["raw", "int8", "jpeg", "JPEG", "png"])
        tensors[name]["coding"] = coding
        return f"entry {name!r} coding = {coding!r}"
    if op == "not_dict":
        value = rng.choice([[], None, "jpeg", 1, [tensors[name]]])
        tensors[name] = value
        return f"entry {name!r} = {_short(value)}"
    if op == "empty":
        manifest["tensors"] = {}
        return "manifest has no tensors"
    manifest["tensors"] = dict(reversed(list(tensors.items())))
    return "reverse the order of the entries"


def m_top(rng, manifest, stored) -> str:
    op = rng.choice(["format", "version", "tensors", "architecture", "config", "extra"])
    value = random_json(rng, _pool(manifest, stored))
    if op == "format":
        manifest["format"] = rng.choice(["jpegweights ", "JPEGWEIGHTS", value])
    elif op == "version":
        manifest["version"] = rng.choice([1, 3, 2.0, "2", True, -2, 2**64, value])
    elif op == "tensors":
        manifest["tensors"] = rng.choice([[], None, "x", [manifest["tensors"]], value])
    elif op in ("architecture", "config"):  # ignored by the reader: these should decode
        manifest[op] = value
    else:
        manifest[rng.choice(FIELD_NAMES)] = value
    return f"manifest top-level {op} edited"


# ---------------------------------------------------------------- stored-tensor edits (struct)


def _jpeg_keys(stored) -> list[str]:
    return [k for k in stored if "/jpeg/" in k]


def s_dtype(rng, manifest, stored) -> str:
    import torch

    from jpegweights.codec.container import DTYPES

    key = rng.choice(list(stored))
    t = stored[key]
    dtype = rng.choice(list(DTYPES.values()))
    flat = t.reshape(-1)
    nbytes = flat.numel() * flat.element_size()
    if rng.random() < 0.5 and nbytes % dtype.itemsize == 0:
        stored[key] = flat.view(torch.uint8).view(dtype).clone()
        how = "reinterpret"
    else:
        stored[key] = t.to(dtype)
        how = "cast"
    return f"stored {key!r} {t.dtype} -> {dtype} ({how})"


def s_shape(rng, manifest, stored) -> str:
    import torch

    key = rng.choice(list(stored))
    t = stored[key]
    n = t.numel()
    op = rng.choice(["flatten", "unsqueeze", "trailing", "split", "shorter", "longer", "empty", "scalar", "zero_dim"])
    if op == "flatten":
        new = t.reshape(-1)
    elif op == "unsqueeze":
        new = t.unsqueeze(0)
    elif op == "trailing":
        new = t.unsqueeze(-1)
    elif op == "split" and n % 2 == 0:
        new = t.reshape(2, -1)
    elif op == "shorter" and n > 0:
        new = t.reshape(-1)[: rng.randrange(n)].clone()
    elif op == "longer":
        new = torch.cat([t.reshape(-1), torch.zeros(rng.choice([1, 7, 64]), dtype=t.dtype)])
    elif op == "scalar":
        new = t.reshape(-1)[:1].reshape(()).clone() if n else torch.zeros((), dtype=t.dtype)
    elif op == "zero_dim":
        new = torch.zeros((0, 5), dtype=t.dtype)
    else:
        new = torch.zeros((0,), dtype=t.dtype)
    stored[key] = new
    return f"stored {key!r} shape {tuple(t.shape)} -> {tuple(new.shape)} ({op})"


def s_contents(rng, manifest, stored) -> str:
    import torch

    key = rng.choice(list(stored))
    t = stored[key].clone()
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return f"stored {key!r} is empty, unchanged"
    if t.is_floating_point():
        value = rng.choice(
            [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-7, -1.0, 1e4, 65504.0, -65504.0, 3e38, 1e-45]
        )
        cast = torch.tensor(value, dtype=torch.float64).to(t.dtype)  # out of range: +-inf, as a writer would store it
        if rng.random() < 0.3:
            flat.fill_(cast)
            where = "all values"
        else:
            where = f"{min(3, flat.numel())} values"
            for _ in range(min(3, flat.numel())):
                flat[rng.randrange(flat.numel())] = cast
    elif t.dtype == torch.bool:
        flat.fill_(rng.random() < 0.5)
        value, where = "bool", "all values"
    else:
        info = torch.iinfo(t.dtype)
        value = rng.choice([info.min, info.max, 0, 1])
        where = f"{min(8, flat.numel())} values"
        for _ in range(min(8, flat.numel())):
            flat[rng.randrange(flat.numel())] = rng.choice(
                [value, rng.randint(info.min, info.max) if info.bits <= 16 else value]
            )
    stored[key] = t
    return f"stored {key!r}: {where} = {value}"


def s_drop_add(rng, manifest, stored) -> str:
    import torch

    op = rng.choice(["drop", "add", "add_jpeg_copy", "drop_all"])
    if op == "drop":
        key = rng.choice(list(stored))
        del stored[key]
        return f"drop stored {key!r}"
    if op == "drop_all":
        stored.clear()
        return "drop every stored tensor"
    if op == "add_jpeg_copy":
        src = rng.choice(_jpeg_keys(stored))
        stored[src + "x"] = stored[src].clone()
        return f"add unreferenced copy of {src!r}"
    key = rng.choice(["extra", "", "\ud800", "m.weight", "a/" * 50])
    stored[key] = torch.zeros(rng.choice([0, 1, 16]), dtype=rng.choice([torch.uint8, torch.float32, torch.bool]))
    return f"add stored {key!r}"


def s_swap(rng, manifest, stored) -> str:
    a, b = rng.sample(list(stored), 2)
    stored[a], stored[b] = stored[b], stored[a]
    return f"swap stored {a!r} and {b!r}"


def s_rename(rng, manifest, stored) -> str:
    """Rename a stored tensor and every reference to it: an honest edit, should decode."""
    key = rng.choice(list(stored))
    new = rng.choice(["renamed", "\u00e9t\u00e9", "x" * 300, key + "/", "__metadata__x"])
    if new in stored:
        return "rename skipped"
    stored[new] = stored.pop(key)
    for path in _paths(manifest):
        if path[-1] in ("key", "scale", "offset") and _get(manifest, path) == key:
            _set(manifest, path, new)
    return f"rename stored {key!r} to {new!r} (references updated)"


def _jpeg_bytes(t) -> bytearray:
    return bytearray(t.numpy().tobytes())


def _to_tensor(data: bytes | bytearray):
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone() if data else torch.zeros(0, dtype=torch.uint8)


def j_truncate(rng, manifest, stored) -> str:
    key = rng.choice(_jpeg_keys(stored))
    data = _jpeg_bytes(stored[key])
    n = rng.choice(
        [0, 1, 2, 3, 4, 10, 20, 100, 160, len(data) - 1, len(data) - 2, len(data) // 2, rng.randrange(len(data))]
    )
    stored[key] = _to_tensor(data[: max(0, n)])
    return f"truncate JPEG {key!r} to {max(0, n)} of {len(data)} bytes"


def j_flip(rng, manifest, stored) -> str:
    key = rng.choice(_jpeg_keys(stored))
    data = _jpeg_bytes(stored[key])
    region = rng.choice(["header", "anywhere", "scan"])
    lo, hi = {
        "header": (0, min(len(data), 200)),
        "anywhere": (0, len(data)),
        "scan": (min(len(data) - 1, 200), len(data)),
    }[region]
    positions = [rng.randrange(lo, hi) for _ in range(rng.choice([1, 1, 2, 4, 16]))]
    for p in positions:
        data[p] = rng.choice([data[p] ^ (1 << rng.randrange(8)), rng.randrange(256), 0xFF, 0x00])
    stored[key] = _to_tensor(data)
    return f"flip bytes {positions[:4]} of JPEG {key!r} ({region})"


def j_insert(rng, manifest, stored) -> str:
    key = rng.choice(_jpeg_keys(stored))
    data = _jpeg_bytes(stored[key])
    p = rng.randrange(len(data) + 1)
    chunk = rng.choice(
        [
            b"\xff",
            b"\xff\xd8",
            b"\xff\xd9",
            b"\xff\xc0\x00\x0b\x08\xff\xff\xff\xff\x01\x01\x11\x00",
            b"\x00" * 64,
            bytes(rng.randrange(256) for _ in range(8)),
            data[:100],
        ]
    )
    data[p:p] = chunk
    if rng.random() < 0.3:
        data += bytes(rng.choice([1, 100, 5000]))
    stored[key] = _to_tensor(data)
    return f"insert {len(chunk)} bytes at {p} of JPEG {key!r}"


def _sof(data: bytearray) -> int:
    return data.find(b"\xff\xc0")


def j_sof(rng, manifest, stored) -> str:
    """Edit the frame header: dimensions (maybe with the manifest agreeing), precision, components, marker."""
    key = rng.choice(_jpeg_keys(stored))
    data = _jpeg_bytes(stored[key])
    p = _sof(data)
    if p < 0:
        return f"JPEG {key!r} has no SOF0, unchanged"
    what = rng.choice(["height", "width", "both", "precision", "components", "marker", "zero"])
    h, w = struct.unpack(">HH", data[p + 5 : p + 9])
    if what in ("height", "width", "both", "zero"):
        nh = (
            0 if what == "zero" else rng.choice([h + 1, h - 1, h * 2, 65500, 65535, 1, h + 8]) if what != "width" else h
        )
        nw = (
            0
            if what == "zero"
            else rng.choice([w + 1, w - 1, w * 2, 65500, 65535, 1, w + 8])
            if what != "height"
            else w
        )
        nh, nw = max(0, min(nh, 65535)), max(0, min(nw, 65535))
        data[p + 5 : p + 9] = struct.pack(">HH", nh, nw)
        synced = rng.random() < 0.5
        if synced:  # the manifest's atlas agrees with the forged header
            for entry in manifest["tensors"].values():
                for a in entry.get("atlases", []) if isinstance(entry, dict) else []:
                    if isinstance(a, dict) and a.get("key") == key:
                        a["height"], a["width"] = nh, nw
        detail = f"{h}x{w} -> {nh}x{nw}{' (manifest synced)' if synced else ''}"
    elif what == "precision":
        data[p + 4] = rng.choice([0, 1, 12, 16, 255])
        detail = f"precision {data[p + 4]}"
    elif what == "components":
        data[p + 9] = rng.choice([0, 2, 3, 4, 255])
        detail = f"components {data[p + 9]}"
    else:
        data[p + 1] = rng.choice([0xC1, 0xC2, 0xC3, 0xC5, 0xC9, 0xCB, 0xCF, 0xC4, 0xD9])
        detail = f"marker 0x{data[p + 1]:02X}"
    stored[key] = _to_tensor(data)
    return f"JPEG {key!r} frame header: {detail}"


def j_replace(rng, manifest, stored) -> str:
    """Replace a stream by another one: another atlas's, or one made here with PIL."""
    import io

    import numpy as np
    from PIL import Image

    key = rng.choice(_jpeg_keys(stored))
    data = _jpeg_bytes(stored[key])
    p = _sof(data)
    h, w = struct.unpack(">HH", data[p + 5 : p + 9]) if p >= 0 else (16, 16)
    op = rng.choice(["other_atlas", "same_dims_gray", "progressive", "rgb", "other_dims", "png", "empty"])
    if op == "other_atlas":
        src = rng.choice(_jpeg_keys(stored))
        stored[key] = stored[src].clone()
        return f"JPEG {key!r} replaced by {src!r}"
    if op == "empty":
        stored[key] = _to_tensor(b"")
        return f"JPEG {key!r} replaced by nothing"
    pixels = np.frombuffer(bytes(rng.randrange(256) for _ in range(64)) * (h * w // 64 + 1), dtype=np.uint8)[
        : h * w
    ].reshape(h, w)
    buf = io.BytesIO()
    from jpegweights.codec.jpeg import pillow_buffer

    if max(h, w) > 65500:  # a forged frame header: libjpeg cannot write such an image
        stored[key] = _to_tensor(b"")
        return f"JPEG {key!r} of forged size {h}x{w} replaced by nothing"
    with pillow_buffer(h, 3 * w):  # Pillow's own buffer is too small for some noisy images
        if op == "same_dims_gray":  # an honest substitute: should decode
            Image.fromarray(pixels, "L").save(buf, format="JPEG", quality=rng.choice([5, 50, 95]))
        elif op == "progressive":
            Image.fromarray(pixels, "L").save(buf, format="JPEG", progressive=True)
        elif op == "rgb":
            Image.fromarray(pixels, "L").convert("RGB").save(buf, format="JPEG")
        elif op == "other_dims":
            Image.fromarray(pixels[: max(1, h // 2)], "L").save(buf, format="JPEG")
        else:
            Image.fromarray(pixels, "L").save(buf, format="PNG")
    stored[key] = _to_tensor(buf.getvalue())
    return f"JPEG {key!r} replaced by a PIL-made {op} image"


STRUCT_MUTATIONS = [
    (m_value, 6), (m_copy, 2), (m_delete, 2), (m_add, 2), (m_nudge, 5), (m_atlases, 3), (m_entries, 2), (m_top, 2),
    (s_dtype, 2), (s_shape, 2), (s_contents, 2), (s_drop_add, 1), (s_swap, 1), (s_rename, 1),
    (j_truncate, 2), (j_flip, 3), (j_insert, 1), (j_sof, 2), (j_replace, 2),
]  # fmt: skip


def _pick(rng: random.Random, weighted: list[tuple[Any, int]]) -> Any:
    return rng.choices([f for f, _ in weighted], [w for _, w in weighted])[0]


def _parsed(base: bytes) -> tuple[dict, dict]:
    from jpegweights.codec.container import read

    stored, manifest = read(base)
    return {k: v.clone() for k, v in stored.items()}, _mutable(manifest)


def struct_mutation(rng: random.Random, base: bytes, rounds: int = 1, packed: bool = False) -> tuple[bytes, str]:
    from jpegweights.codec.container import PACKED_VERSION, write

    stored, manifest = _parsed(base)
    if packed:
        manifest["version"] = PACKED_VERSION
    notes = []
    for _ in range(rounds):
        fn = _pick(rng, STRUCT_MUTATIONS)
        if (
            not isinstance(manifest, dict)
            or not isinstance(manifest.get("tensors"), dict)
            or not manifest["tensors"]
            or not _jpeg_keys(stored)
            or len(stored) < 2
        ):
            if fn.__name__.startswith(("m_atlases", "m_entries", "m_nudge", "j_", "s_swap")):
                fn = m_value
        if not _paths(manifest) and fn in (m_value, m_copy, m_delete, m_nudge):
            fn = m_add
        try:
            notes.append(f"{fn.__name__}: {fn(rng, manifest, stored)}")
        except (IndexError, ValueError, KeyError, TypeError, AttributeError) as exc:  # the mutation did not apply
            notes.append(f"{fn.__name__}: not applicable ({type(exc).__name__})")
    return write(stored, manifest, packed=packed), "; ".join(notes)


def struct_multi(rng: random.Random, base: bytes) -> tuple[bytes, str]:
    return struct_mutation(rng, base, rng.choice([2, 3, 4]))


def packed_edit(rng: random.Random, base: bytes) -> tuple[bytes, str]:
    """The packed container (version 4): a struct mutation written packed, or the packed good
    package with its deflated index edited (flipped, cut, padded, replaced), signed again."""
    from jpegweights.codec.container import DATA, DIGEST_KEY, INDEX

    if rng.random() < 0.6:
        data, note = struct_mutation(rng, base, rng.choice([1, 1, 2]), packed=True)
        return data, f"packed {note}"
    header, body = split(struct_mutation(rng, base, 0, packed=True)[0])
    begin, end = header[INDEX]["data_offsets"]
    index, data = bytearray(body[begin:end]), body[end:]
    op = rng.choice(["flip", "truncate", "pad", "json", "stored"])
    if op == "flip":
        for _ in range(rng.choice([1, 4])):
            index[rng.randrange(len(index))] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        del index[rng.randrange(len(index)) :]
    elif op == "pad":
        index += bytes([rng.choice([0, 0, 1, 255])]) * rng.choice([1, 7, 8, 100])
    elif op == "json":
        index = bytearray(zlib.compress(json.dumps(random_json(rng, [])).encode()))
    else:  # valid zlib of a wrong-sized index
        text = zlib.decompress(bytes(index))
        index = bytearray(zlib.compress(text.replace(b'"data_offsets":[0,', b'"data_offsets":[1,', 1)))
    header[INDEX]["data_offsets"] = [0, len(index)]
    header[INDEX]["shape"] = [len(index)]
    header[DATA]["data_offsets"] = [len(index), len(index) + len(data)]
    body = bytes(index) + data
    header["__metadata__"][DIGEST_KEY] = sha256("", body)
    return pack(header, body), f"packed index {op}"


# ---------------------------------------------------------------- raw header (safetensors JSON)


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def pack(header: Any, body: bytes, pad: bytes = b" ") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    head += pad * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + body


def sha256(text: str, body: bytes) -> str:
    """The container's digest, tolerating lone surrogates (the writer of a hostile file would)."""
    h = hashlib.sha256(text.encode("utf-8", "surrogatepass"))
    h.update(body)
    return h.hexdigest()


def header_edit(rng: random.Random, base: bytes) -> tuple[bytes, str]:
    header, body = split(base)
    names = [k for k in header if k != "__metadata__"]
    op = rng.choice(
        [
            "entry_value",
            "entry_value",
            "dtype_same_size",
            "reshape_same_numel",
            "offsets",
            "metadata",
            "drop_entry",
            "dup_offsets",
            "padding",
            "not_object",
        ]
    )
    if op == "entry_value":
        sub = {k: header[k] for k in names}
        path = rng.choice(_paths(sub))
        value = random_json(rng, [_get(sub, p) for p in _paths(sub)])
        _set(header, path, value)
        note = f"header {_show_path(path)} = {_short(value)}"
    elif op == "dtype_same_size":
        name = rng.choice(names)
        groups = [["U8", "I8", "BOOL"], ["F16", "BF16", "I16"], ["F32", "I32"], ["F64", "I64"]]
        old = header[name]["dtype"]
        group = next(g for g in groups if old in g)
        header[name]["dtype"] = rng.choice([d for d in group if d != old])
        note = f"header {name!r} dtype {old} -> {header[name]['dtype']} (same item size: digest still valid)"
    elif op == "reshape_same_numel":
        name = rng.choice(names)
        shape = header[name]["shape"]
        n = 1
        for d in shape:
            n *= d
        header[name]["shape"] = rng.choice(
            [
                [n],
                [1, n],
                [n, 1],
                [1] * 16 + [n],
                [2, n // 2] if n % 2 == 0 else [n, 1, 1],
                [0, 0] if n == 0 else [n, 1],
            ]
        )
        note = f"header {name!r} shape {shape} -> {header[name]['shape']} (same values: digest still valid)"
    elif op == "offsets":
        name = rng.choice(names)
        b, e = header[name]["data_offsets"]
        delta = rng.choice([1, -1, 8, -8, 2**62, -(2**62), len(body), e - b])
        header[name]["data_offsets"] = rng.choice([[b + delta, e + delta], [b, e + delta], [b + delta, e], [e, b]])
        note = f"header {name!r} data_offsets [{b}, {e}] -> {header[name]['data_offsets']}"
    elif op == "dup_offsets":
        a, c = rng.sample(names, 2)
        header[a]["data_offsets"] = list(header[c]["data_offsets"])
        note = f"header {a!r} takes the data_offsets of {c!r}"
    elif op == "drop_entry":
        name = rng.choice(names)
        del header[name]
        note = f"header entry {name!r} removed"
    elif op == "metadata":
        meta = header["__metadata__"]
        what = rng.choice(
            ["no_digest", "bad_digest", "no_manifest", "extra", "non_string", "not_object", "delete", "digest_of_other"]
        )
        if what == "no_digest":
            del meta["jpegweights.sha256"]
        elif what == "bad_digest":
            meta["jpegweights.sha256"] = rng.choice(["", "0" * 64, meta["jpegweights.sha256"].upper(), "x"])
        elif what == "no_manifest":
            del meta["jpegweights"]
        elif what == "extra":
            meta[rng.choice(["format", "", "jpegweights.sha512", "\ud800"])] = "pt"
        elif what == "non_string":
            meta[rng.choice(["jpegweights", "jpegweights.sha256", "other"])] = random_json(rng, [])
        elif what == "not_object":
            header["__metadata__"] = rng.choice([None, [], "x", 1])
        elif what == "delete":
            del header["__metadata__"]
        else:
            meta["jpegweights.sha256"] = sha256(meta["jpegweights"], body[:-1])
        note = f"header __metadata__ {what}"
    elif op == "padding":
        data = json.dumps(header, separators=(",", ":")).encode()
        pad = rng.choice([b"\t", b"\n", b"\r", b"\x00", b"  ", b"\x0c", b"\xa0", b"//"])
        head = data + pad * rng.choice([1, 7, 8])
        return struct.pack("<Q", len(head)) + head + body, f"header padded with {pad!r}"
    else:
        header = rng.choice([[], None, "x", 1, [header]])
        note = f"header is {_short(header)}"
    return pack(header, body), note


def header_length(rng: random.Random, base: bytes) -> tuple[bytes, str]:
    (n,) = struct.unpack("<Q", base[:8])
    from jpegweights.codec.container import MAX_HEADER_BYTES

    new = rng.choice(
        [
            0,
            1,
            2,
            7,
            8,
            n - 1,
            n + 1,
            n - 8,
            n + 8,
            len(base) - 8,
            len(base) - 7,
            MAX_HEADER_BYTES,
            MAX_HEADER_BYTES + 1,
            2**63,
            2**64 - 1,
            2**32 + n,
        ]
    )
    return struct.pack("<Q", new) + base[8:], f"header length {n} -> {new}"


def header_bytes(rng: random.Random, base: bytes) -> tuple[bytes, str]:
    """Flip bytes inside the JSON header only (keeping its length)."""
    (n,) = struct.unpack("<Q", base[:8])
    data = bytearray(base)
    positions = [8 + rng.randrange(n) for _ in range(rng.choice([1, 1, 2, 3]))]
    for p in positions:
        data[p] = rng.choice(
            [data[p] ^ (1 << rng.randrange(8)), ord(rng.choice('{}[]:,"\\0123456789-e. ')), 0xFF, 0x80, 0x00]
        )
    return bytes(data), f"flip header bytes at {positions}"


# ---------------------------------------------------------------- manifest text (digest recomputed)

PLACEHOLDER = "@@fuzz@@"


def _text_with(rng: random.Random, manifest: Any, replacement: str) -> tuple[str, str]:
    """The manifest's JSON with a random node replaced by the raw text ``replacement``."""
    paths = _paths(manifest)
    path = rng.choice(paths) if paths else None
    if path is None:
        return replacement, "<root>"
    _set(manifest, path, PLACEHOLDER)
    return json.dumps(manifest, separators=(",", ":")).replace(json.dumps(PLACEHOLDER), replacement, 1), _show_path(
        path
    )


def text_edit(rng: random.Random, base: bytes) -> tuple[bytes, str]:
    header, body = split(base)
    meta = header["__metadata__"]
    text = meta["jpegweights"]
    manifest = json.loads(text)
    op = rng.choice(
        [
            "token",
            "token",
            "deep",
            "deep_object",
            "duplicate_key",
            "garbage",
            "char",
            "whole",
            "surrogate",
            "number_in_place",
        ]
    )
    if op == "token":
        token = rng.choice(WEIRD_TOKENS)
        text, where = _text_with(rng, manifest, token)
        note = f"manifest {where} = raw token {token[:24]!r}{'...' if len(token) > 24 else ''}"
    elif op == "deep":
        depth = rng.choice([500, 990, 1000, 1100, 5000, 100000, 1000000])
        text, where = _text_with(rng, manifest, "[" * depth + "]" * depth)
        note = f"manifest {where} = list nested {depth} deep"
    elif op == "deep_object":
        depth = rng.choice([1000, 20000, 200000])
        text, where = _text_with(rng, manifest, '{"a":' * depth + "1" + "}" * depth)
        note = f"manifest {where} = object nested {depth} deep"
    elif op == "duplicate_key":
        dicts = [()] + [p for p in _paths(manifest) if isinstance(_get(manifest, p), dict) and _get(manifest, p)]
        path = rng.choice(dicts)
        node = _get(manifest, path)
        key = rng.choice(list(node))
        value = copy.deepcopy(node[key]) if rng.random() < 0.5 else random_json(rng, [])
        marker = "\x00dup"
        node[marker] = value
        text = json.dumps(manifest, separators=(",", ":")).replace(json.dumps(marker), json.dumps(key), 1)
        note = f"manifest {_show_path(path)} has key {key!r} twice"
    elif op == "garbage":
        p = rng.randrange(len(text) + 1)
        chunk = "".join(
            rng.choice('{}[]:,"\\ 0123456789-+.eEtrufalsn\x00\ud800é') for _ in range(rng.choice([1, 2, 5]))
        )
        text = text[:p] + chunk + text[p:]
        note = f"insert {chunk!r} into the manifest text at {p}"
    elif op == "char":
        p = rng.randrange(len(text))
        text = (
            text[:p] + text[p + 1 :]
            if rng.random() < 0.5
            else text[:p] + rng.choice(["\ufeff", "\u2028", " ", "\t", "0"]) + text[p + 1 :]
        )
        note = f"delete/replace manifest character {p}"
    elif op == "whole":
        text = rng.choice(
            [
                "",
                "null",
                "[]",
                "1",
                '"x"',
                "\ufeff" + text,
                text + " x",
                text + text,
                " " * 100 + text + "\n",
                "[" + text + "]",
            ]
        )
        note = f"manifest text replaced by {text[:20]!r}..."
    elif op == "surrogate":
        text, where = _text_with(rng, manifest, rng.choice(['"\\ud800"', '"\\udc00x"', '"\ud800"', '"\\u0000"']))
        note = f"manifest {where} = string with a lone surrogate or NUL"
    else:
        ints = [p for p in _paths(manifest) if type(_get(manifest, p)) is int]
        path = rng.choice(ints)
        form = rng.choice(["{}.0", "{}e0", "{}E+0", "0{}", "-{}", "{}.00000000000000001"])
        text, where = _text_with(rng, manifest, form.format(_get(manifest, path)))
        note = f"manifest number written as {form!r}"
    meta["jpegweights"] = text
    if rng.random() < 0.95:  # almost always a correct digest, so the manifest parser is reached
        meta["jpegweights.sha256"] = sha256(text, body)
    return pack(header, body), f"text {op}: {note}"


# ---------------------------------------------------------------- whole file


def raw_edit(rng: random.Random, base: bytes) -> tuple[bytes, str]:
    data = bytearray(base)
    op = rng.choice(["flip", "flip", "insert", "delete", "truncate", "append", "empty", "double"])
    if op == "flip":
        positions = [rng.randrange(len(data)) for _ in range(rng.choice([1, 1, 2, 8]))]
        for p in positions:
            data[p] ^= 1 << rng.randrange(8)
        return bytes(data), f"raw flip bits at {positions[:4]}"
    if op == "insert":
        p = rng.randrange(len(data) + 1)
        chunk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 100])))
        data[p:p] = chunk
        return bytes(data), f"raw insert {len(chunk)} bytes at {p}"
    if op == "delete":
        p = rng.randrange(len(data))
        n = rng.choice([1, 8, 100, 5000])
        del data[p : p + n]
        return bytes(data), f"raw delete {n} bytes at {p}"
    if op == "truncate":
        n = rng.choice([0, 1, 7, 8, 9, 100, len(data) - 1, rng.randrange(len(data))])
        return bytes(data[:n]), f"raw truncate to {n} bytes"
    if op == "append":
        return bytes(data) + bytes(rng.choice([1, 8, 1000])), "raw append zero bytes"
    if op == "empty":
        return b"", "raw empty file"
    return bytes(data) * 2, "raw file twice"


STRATEGIES: list[tuple[str, Any, int]] = [
    ("struct", struct_mutation, 50),
    ("struct_multi", struct_multi, 12),
    ("text", text_edit, 14),
    ("header", header_edit, 10),
    ("header_length", header_length, 2),
    ("header_bytes", header_bytes, 4),
    ("raw", raw_edit, 8),
    ("packed", packed_edit, 12),
]


def mutate(seed: int, case: int, base: bytes) -> tuple[str, bytes, str]:
    """Case ``case`` of ``seed``: (strategy, mutated bytes, one-line description)."""
    rng = random.Random(f"{seed}:{case}")
    name, fn, _ = rng.choices(STRATEGIES, [w for *_, w in STRATEGIES])[0]
    data, note = fn(rng, base)
    return name, data, note


# ================================================================ one case, in the child


def _status_kib(field_name: str, pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak RSS growth across a block: VmHWM reset through clear_refs, else getrusage (coarser)."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = _status_kib("VmHWM") is not None
        except OSError:
            self.exact = False

    def start(self) -> None:
        if self.exact:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current RSS
            self.before = _status_kib("VmRSS") or 0
        else:
            import resource

            self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    def growth_mib(self) -> float:
        if self.exact:
            peak = _status_kib("VmHWM") or 0
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, peak - self.before) / 1024


def _where(exc: BaseException) -> str:
    """The innermost frame of the traceback in the codec package (else the innermost), as file:line (function)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"

    def rel(filename: str) -> str:
        try:
            return str(Path(filename).resolve().relative_to(ROOT))
        except ValueError:
            return filename

    inside = [f for f in frames if rel(f.filename).startswith(os.path.join("src", "jpegweights", "codec") + os.sep)]
    f = (inside or frames)[-1]
    return f"{rel(f.filename)}:{f.lineno} ({f.name})"


SELFTEST_ENV = "JPW_FUZZ_SELFTEST"


def _selftest_faults() -> dict[int, str]:
    """Faults injected on purpose, to test the watcher: ``JPW_FUZZ_SELFTEST="3:hang,5:crash,7:mem100,9:escape"``."""
    spec = os.environ.get(SELFTEST_ENV, "")
    return {int(c): f for c, f in (item.split(":") for item in spec.split(",") if item)}


def _inject(fault: str) -> None:
    if fault == "hang":
        time.sleep(10**6)
    elif fault == "crash":
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault.startswith("mem"):
        hog = b"\x01" * (int(fault[3:]) * MIB)  # touched pages, so they count in RSS
        del hog
    elif fault == "escape":
        raise RuntimeError("injected escape")


def run_case(
    seed: int, case: int, base: bytes, memory: PeakMemory | None = None, fault: str | None = None
) -> dict[str, Any]:
    from jpegweights import codec
    from jpegweights.compressed import load_matrices

    rec: dict[str, Any] = {"i": case}
    try:
        strategy, data, note = mutate(seed, case, base)
    except Exception as exc:  # a bug in the fuzzer itself: reported, never counted as the codec's
        return {
            **rec,
            "outcome": "fuzzer_error",
            "cls": type(exc).__name__,
            "msg": str(exc)[:300],
            "where": _where(exc),
        }
    rec.update(strategy=strategy, note=note[:300])
    if memory:
        memory.start()
    try:
        if fault:
            _inject(fault)
        state = codec.decode(data)
        if not isinstance(state, dict):
            raise TypeError(f"decode returned {type(state).__name__}, not a dict")
        del state
        load_matrices(data)  # the compressed domain's reader (jpeglib) gets every package the decoder took
        rec["outcome"] = "decoded"
    except codec.CodecError as exc:
        rec.update(outcome="refused", cls=type(exc).__name__)
    except BaseException as exc:  # noqa: BLE001 - anything else is what we are looking for
        if isinstance(exc, KeyboardInterrupt):
            raise
        rec.update(
            outcome="escape",
            cls=f"{type(exc).__module__}.{type(exc).__qualname__}",
            msg=str(exc)[:300],
            where=_where(exc),
        )
    if memory:
        rec["mib"] = round(memory.growth_mib(), 1)
    return rec


def worker(seed: int, start: int, stop: int) -> None:
    """Run cases ``start..stop-1``, one JSON line each on stdout; everything else goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries cannot corrupt the protocol
    from jpegweights import codec

    base = GOOD.read_bytes()
    codec.decode(base)  # warm-up: torchvision's JPEG decoder is imported on first use
    memory = PeakMemory()
    faults = _selftest_faults()
    out.write(json.dumps({"ready": True, "exact_memory": memory.exact}) + "\n")
    for case in range(start, stop):
        out.write(json.dumps(run_case(seed, case, base, memory, faults.get(case))) + "\n")
    out.write(json.dumps({"done": True}) + "\n")


# ================================================================ the parent


@dataclass
class Summary:
    seed: int
    cases: int = 0
    decoded: int = 0
    refused: Counter = field(default_factory=Counter)
    escapes: list[dict[str, Any]] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    memory_failures: list[dict[str, Any]] = field(default_factory=list)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    fuzzer_errors: list[dict[str, Any]] = field(default_factory=list)
    strategies: dict[str, Counter] = field(default_factory=dict)
    peak_mib: float = 0.0
    peak_case: int | None = None
    exact_memory: bool = True
    wall_s: float = 0.0
    max_mib: float = 512.0
    module: str = "tests.codec.fuzz"  # whose worker ran the cases (tests/handlers/fuzz.py reuses this watcher)
    accepted: str = "decoded"  # what the cases that raised nothing are called

    @property
    def past_digest(self) -> int:
        """Cases the reader judged beyond the digest check (decoded, or refused for another reason)."""
        return self.cases - self.refused.get("ChecksumError", 0)

    @property
    def ok(self) -> bool:
        return not (self.escapes or self.hangs or self.memory_failures or self.crashes or self.fuzzer_errors)

    def add(self, rec: dict[str, Any]) -> None:
        self.cases += 1
        by = self.strategies.setdefault(rec.get("strategy", "?"), Counter())
        by["cases"] += 1
        outcome = rec["outcome"]
        if outcome == "decoded":
            self.decoded += 1
            by["decoded"] += 1
        elif outcome == "refused":
            self.refused[rec["cls"]] += 1
            by["ChecksumError" if rec["cls"] == "ChecksumError" else "refused"] += 1
        elif outcome == "escape":
            self.escapes.append(rec)
            by["escape"] += 1
        elif outcome == "fuzzer_error":
            self.fuzzer_errors.append(rec)
        mib = rec.get("mib", 0.0)
        if mib > self.peak_mib:
            self.peak_mib, self.peak_case = mib, rec["i"]
        if mib > self.max_mib:
            self.memory_failures.append(
                {"i": rec["i"], "mib": mib, "strategy": rec.get("strategy"), "note": rec.get("note")}
            )

    def format(self) -> str:
        pct = lambda n: f"{100 * n / self.cases:.1f}%" if self.cases else "-"  # noqa: E731
        lines = [
            (
                f"fuzz seed={self.seed}: {self.cases} cases in {self.wall_s:.1f} s "
                f"({1000 * self.wall_s / max(1, self.cases):.1f} ms/case)"
            ),
            f"  {self.accepted + ':':<17} {self.decoded} ({pct(self.decoded)})",
            f"  refused:          {sum(self.refused.values())} ({pct(sum(self.refused.values()))})",
            *[f"    {cls:<20} {n}" for cls, n in self.refused.most_common()],
            f"  past the digest:  {self.past_digest} ({pct(self.past_digest)})",
            f"  escapes:          {len(self.escapes)}",
            f"  hangs:            {len(self.hangs)}",
            f"  memory failures:  {len(self.memory_failures)} (bound {self.max_mib:g} MiB; peak growth "
            f"{self.peak_mib:.1f} MiB"
            f" at case {self.peak_case}{'' if self.exact_memory else ', measured with ru_maxrss'})",
            f"  crashes:          {len(self.crashes)}",
        ]
        kinds = Counter((e["cls"], e.get("where")) for e in self.escapes)
        for (cls, where), n in kinds.most_common():
            lines.append(
                f"    distinct escape: {cls} at {where}: {n} case(s), e.g. case "
                f"{next(e['i'] for e in self.escapes if (e['cls'], e.get('where')) == (cls, where))}"
            )
        if self.fuzzer_errors:
            lines.append(f"  fuzzer errors:    {len(self.fuzzer_errors)} (bugs in the fuzzer itself)")
        lines.append("  by strategy:      cases / decoded / refused past digest / ChecksumError / escapes")
        for name, c in sorted(self.strategies.items()):
            lines.append(
                f"    {name:<16} {c['cases']:>5} {c['decoded']:>6} {c['refused']:>6} {c['ChecksumError']:>6} "
                f"{c['escape']:>4}"
            )
        for title, items in (
            ("ESCAPE", self.escapes),
            ("HANG", self.hangs),
            ("MEMORY", self.memory_failures),
            ("CRASH", self.crashes),
            ("FUZZER ERROR", self.fuzzer_errors),
        ):
            for r in items:
                detail = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("i", "outcome"))
                lines.append(f"  {title} case {r['i']} (seed {self.seed}): {detail}")
        if not self.ok:
            lines.append(f"  replay one: python -m {self.module} --seed {self.seed} --replay CASE [--write case.jpw]")
        return "\n".join(lines)


class _Child:
    """One worker process and a thread that turns its stdout into a queue of lines."""

    def __init__(
        self, seed: int, start: int, stop: int, selftest: str | None = None, module: str = "tests.codec.fuzz"
    ) -> None:
        self.stderr = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
        env.pop(SELFTEST_ENV, None)
        if selftest:
            env[SELFTEST_ENV] = selftest
        cmd = [
            sys.executable,
            "-m",
            module,
            "--worker",
            "--seed",
            str(seed),
            "--start",
            str(start),
            "--stop",
            str(stop),
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def rss_mib(self) -> float | None:
        kib = _status_kib("VmRSS", self.proc.pid)
        return None if kib is None else kib / 1024

    def stderr_tail(self, n: int = 600) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-n:].strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.proc.stdout.close()
        self.stderr.close()


def _run_range(
    summary: Summary,
    seed: int,
    start: int,
    stop: int,
    hang_s: float,
    max_mib: float,
    progress,
    selftest: str | None,
    describe=None,
) -> None:
    """Cases ``start..stop-1`` in watched workers of ``summary.module``; ``describe(seed, case)``
    names a case its worker could not report (this fuzzer's ``_describe`` by default)."""
    describe = describe or _describe
    case = start
    while case < stop:
        child = _Child(seed, case, stop, selftest, summary.module)
        try:
            line = child.lines.get(timeout=STARTUP_S)
            if line is None or not json.loads(line).get("ready"):
                raise RuntimeError(f"fuzz worker failed to start (exit {child.proc.wait()}): {child.stderr_tail(2000)}")
            summary.exact_memory &= json.loads(line)["exact_memory"]
            baseline = child.rss_mib()
            last = time.monotonic()
            while True:
                try:
                    line = child.lines.get(timeout=0.05)
                except queue.Empty:
                    if time.monotonic() - last > hang_s:
                        child.kill()
                        summary.cases += 1
                        summary.hangs.append({"i": case, "seconds": hang_s, **describe(seed, case)})
                        case += 1
                        break
                    rss = child.rss_mib()
                    if baseline is not None and rss is not None and rss - baseline > 2 * max_mib:
                        child.kill()  # a safety net: the case would exceed the bound anyway
                        summary.cases += 1
                        summary.memory_failures.append(
                            {"i": case, "mib": f">{rss - baseline:.0f} (killed)", **describe(seed, case)}
                        )
                        case += 1
                        break
                    continue
                if line is None:  # the child died mid-case
                    code = child.proc.wait()
                    summary.cases += 1
                    summary.crashes.append(
                        {"i": case, "exit": code, "stderr": child.stderr_tail(), **describe(seed, case)}
                    )
                    case += 1
                    break
                rec = json.loads(line)
                if rec.get("done"):
                    case = stop
                    break
                summary.add(rec)
                case, last = rec["i"] + 1, time.monotonic()
                if progress and summary.cases % progress == 0:
                    print(f"  ... {summary.cases} cases", file=sys.stderr, flush=True)
        finally:
            child.close()


def _describe(seed: int, case: int) -> dict[str, str]:
    """The strategy and description of a case, computed here (the child could not report them)."""
    try:
        strategy, _, note = mutate(seed, case, GOOD.read_bytes())
        return {"strategy": strategy, "note": note[:300]}
    except Exception as exc:  # noqa: BLE001
        return {"strategy": "?", "note": f"could not re-derive: {exc!r}"[:300]}


def run(
    cases: int,
    seed: int,
    *,
    max_mib: float = 512.0,
    hang_s: float = 20.0,
    start: int = 0,
    progress: int | None = None,
    selftest: str | None = None,
) -> Summary:
    """Run cases ``start..start+cases-1`` of ``seed`` in watched child processes.

    ``selftest`` injects faults into chosen cases to check the watcher itself (see ``_selftest_faults``).
    """
    t0 = time.monotonic()
    summary = Summary(seed=seed, max_mib=max_mib)
    _run_range(summary, seed, start, start + cases, hang_s, max_mib, progress, selftest)
    summary.wall_s = time.monotonic() - t0
    return summary


def replay(seed: int, case: int, write: str | None) -> int:
    """Run one case in this process and show everything about it."""
    from jpegweights import codec
    from jpegweights.compressed import load_matrices

    base = GOOD.read_bytes()
    strategy, data, note = mutate(seed, case, base)
    print(f"case {case} of seed {seed}: {strategy}: {note} ({len(data)} bytes)")
    if write:
        Path(write).write_bytes(data)
        print(f"written to {write}")
    memory = PeakMemory()
    memory.start()
    t0 = time.monotonic()
    try:
        state = codec.decode(data)
        print(f"decoded: {', '.join(f'{k} {tuple(v.shape)} {v.dtype}' for k, v in state.items())}")
        matrices, dense = load_matrices(data)
        print(f"coefficients: {', '.join(matrices) or 'none'}; left dense: {dense or 'none'}")
        status = 0
    except codec.CodecError as exc:
        print(f"refused: {type(exc).__name__}: {exc}")
        status = 0
    except Exception:
        traceback.print_exc()
        status = 1
    print(f"{time.monotonic() - t0:.3f} s, peak RSS growth {memory.growth_mib():.1f} MiB")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.codec.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--max-mib", type=float, default=512.0, help="peak RSS growth allowed per case (MiB)")
    parser.add_argument("--hang-s", type=float, default=20.0, help="seconds without a finished case that make a hang")
    parser.add_argument("--replay", type=int, metavar="CASE", help="run one case here, with its traceback")
    parser.add_argument("--write", metavar="PATH", help="with --replay: save the mutated package")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.seed, args.start, args.stop)
        return 0
    if args.replay is not None:
        return replay(args.seed, args.replay, args.write)
    summary = run(args.cases, args.seed, max_mib=args.max_mib, hang_s=args.hang_s, start=args.start, progress=500)
    print(summary.format())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())

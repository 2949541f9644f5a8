"""Writes ``attacks/codec/*.jpw``: one crafted package per attack on the reader, and
``expected.json``: the exception each must raise and a pattern of its message.

    .venv/bin/python attacks/make_codec_attacks.py

Every attack that edits a manifest recomputes the digest: the digest guards against
corruption, not against an attacker, so the reader's other checks must hold on their own.
``tests/codec/test_attacks.py`` loads every file and checks the outcome.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jpegweights.codec import EncodeConfig, encode  # noqa: E402
from jpegweights.codec.container import read, write  # noqa: E402
from tests.codec.helpers import rewrite  # noqa: E402

OUT = ROOT / "attacks" / "codec"
DEEP = 10_000
ATTACKS: dict[str, dict] = {}  # file name -> {"error", "match", "stage", "what"}


def base(compact: bool = False) -> bytes:
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, 1, 12, 25, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(96, 200), mode="bilinear")[0, 0]
    state = {
        "m.weight": smooth,  # matrix layout, 6 bands
        "t.weight": torch.randn(64, 784, generator=g) * 0.05,  # rows layout (28x28 tiles), 8 atlases
        "h.weight": torch.randn(10, 64, generator=g),  # int8
        "h.bias": torch.randn(10, generator=g),  # raw
    }
    config = EncodeConfig(
        coding_for={"m.weight": "jpeg", "t.weight": "jpeg", "h.weight": "int8"},
        layout_for={"m.weight": "matrix", "t.weight": "rows:28x28"},
        max_atlas_pixels=4096,
        compact=compact,
    )
    return encode(
        state,
        config,
        architecture={"input_shape": [784], "layers": [{"type": "Linear", "in_features": 784, "out_features": 10}]},
    )


def raw_header(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


def header_of(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def with_header(data: bytes, edit: Callable[[dict], None]) -> bytes:
    header, body = header_of(data)
    edit(header)
    return raw_header(json.dumps(header).encode(), body)


def attack(name: str, error: str, match: str, what: str, stage: str = "decode") -> Callable:
    def register(fn: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        ATTACKS[name] = {"error": error, "match": match, "stage": stage, "what": what, "make": fn}
        return fn

    return register


def m_atlases(man: dict) -> list[dict]:
    return man["tensors"]["m.weight"]["atlases"]


# ---------------------------------------------------------------- coverage


@attack(
    "overlapping_atlases.jpw",
    "ManifestError",
    "covers them twice",
    "two atlases cover the same rows; the rows they leave would be uninitialised memory",
)
def _(data):
    return rewrite(data, lambda m: m_atlases(m)[1].update(row=m_atlases(m)[0]["row"]))


@attack("atlas_hole.jpw", "ManifestError", "uncovered|cover", "a band of the matrix is covered by no atlas")
def _(data):
    def edit(m):
        a = m_atlases(m).pop()
        m["unused"] = a["key"]

    def drop(s):
        del s["m.weight/jpeg/5"]

    return rewrite(data, edit, drop)


@attack(
    "reused_jpeg.jpw",
    "ManifestError",
    "referenced more than once",
    "every atlas points at the same stored JPEG (a 60 KB file could expand to gigabytes)",
)
def _(data):
    def edit(m):
        for a in m_atlases(m):
            a["key"] = "m.weight/jpeg/0"

    def drop(s):
        for i in range(1, 6):
            del s[f"m.weight/jpeg/{i}"]

    return rewrite(data, edit, drop)


@attack("rows_overlap.jpw", "ManifestError", "uncovered or cover them twice", "two tile atlases claim the same rows")
def _(data):
    return rewrite(data, lambda m: m["tensors"]["t.weight"]["atlases"][1].update(first=0))


@attack(
    "unreferenced_tensor.jpw", "ManifestError", "not referenced", "a stored tensor that no entry uses (hidden data)"
)
def _(data):
    return rewrite(data, edit_stored=lambda s: s.update(hidden=torch.zeros(16, dtype=torch.uint8)))


# ---------------------------------------------------------------- values


@attack("nan_scale.jpw", "ManifestError", "scale or offset is NaN", "a NaN scale would be served as NaN weights")
def _(data):
    def edit(s):
        s["m.weight/scale"] = s["m.weight/scale"].clone()
        s["m.weight/scale"][3] = float("nan")

    return rewrite(data, edit_stored=edit)


@attack("inf_offset.jpw", "ManifestError", "scale or offset is NaN, Inf", "an infinite offset")
def _(data):
    def edit(s):
        s["h.weight/offset"] = s["h.weight/offset"].clone()
        s["h.weight/offset"][0] = float("inf")

    return rewrite(data, edit_stored=edit)


@attack(
    "overflowing_scale.jpw",
    "ManifestError",
    "out of F16's range",
    "finite scale whose codes overflow the tensor's float16 dtype",
)
def _(data):
    def edit(m):
        m["tensors"]["h.weight"]["dtype"] = "F16"

    def big(s):
        s["h.weight/scale"] = torch.full((10,), 1000.0, dtype=torch.float32)

    return rewrite(data, edit, big)


@attack("nan_raw.jpw", "ManifestError", "raw tensor holds NaN", "NaN in a raw float tensor")
def _(data):
    return rewrite(data, edit_stored=lambda s: s.update({"h.bias": torch.tensor([float("nan")] * 10)}))


# ---------------------------------------------------------------- types and sizes


@attack("float_tile.jpw", "ManifestError", "tile side must be an integer", "a float tile side (was a TypeError)")
def _(data):
    return rewrite(data, lambda m: m["tensors"]["t.weight"].update(tile=[28.0, 28]))


@attack("float_grid.jpw", "ManifestError", "grid must be an integer", "a float grid (was a TypeError)")
def _(data):
    return rewrite(data, lambda m: m["tensors"]["t.weight"]["atlases"][0].update(grid=[3.5, 32]))


@attack(
    "huge_shape_header.jpw", "FormatError", "integer of 22 digits", "a header shape of [0, 2**70] (was a TypeError)"
)
def _(data):
    def edit(h):
        h["h.bias"]["shape"] = [0, 2**70]

    return with_header(data, edit)


@attack("huge_shape_manifest.jpw", "ManifestError", "more than 2\\*\\*48 values", "a manifest shape of [2**30, 2**30]")
def _(data):
    return rewrite(data, lambda m: m["tensors"]["h.bias"].update(shape=[2**30, 2**30]))


@attack("bool_count.jpw", "ManifestError", "must be an integer", "true where an integer belongs")
def _(data):
    return rewrite(data, lambda m: m["tensors"]["t.weight"]["atlases"][1].update(count=True))


@attack(
    "unknown_entry_field.jpw",
    "ManifestError",
    "unknown fields \\['exec'\\]",
    "an entry field this version does not define",
)
def _(data):
    return rewrite(data, lambda m: m["tensors"]["h.bias"].update(exec="rm -rf /"))


@attack(
    "layer_type_list.jpw",
    "ArchitectureError",
    "unknown type \\['Linear'\\]",
    "a layer type that is a list: the package still decodes; building it fails (was a TypeError)",
    stage="build",
)
def _(data):
    return rewrite(data, lambda m: m["architecture"]["layers"][0].update(type=["Linear"]))


@attack("layer_type_dict.jpw", "ArchitectureError", "unknown type \\{\\}", "a layer type that is a dict", stage="build")
def _(data):
    return rewrite(data, lambda m: m["architecture"]["layers"][0].update(type={}))


@attack(
    "unknown_layer_type.jpw",
    "ArchitectureError",
    "unknown type 'Transformer'",
    "a layer type this version does not know: tensors still decode",
    stage="build",
)
def _(data):
    return rewrite(data, lambda m: m["architecture"]["layers"][0].update(type="Transformer"))


@attack(
    "negative_linear.jpw", "ArchitectureError", "negative dimension", "Linear(-1) (was a RuntimeError)", stage="build"
)
def _(data):
    return rewrite(data, lambda m: m["architecture"]["layers"][0].update(in_features=-1))


@attack(
    "huge_linear.jpw",
    "ArchitectureError",
    "over the limit",
    "a 4 TB Linear from a 1 KB manifest; refused before any allocation",
    stage="build",
)
def _(data):
    return rewrite(data, lambda m: m["architecture"]["layers"][0].update(in_features=1 << 20, out_features=1 << 20))


@attack(
    "tensors_do_not_fit.jpw",
    "ArchitectureError",
    "do not fit the architecture",
    "tensors whose names or shapes differ from the architecture's",
    stage="build",
)
def _(data):
    return rewrite(data, lambda m: m["architecture"]["layers"][0].update(out_features=11))


# ---------------------------------------------------------------- JSON


@attack("deep_header.jpw", "FormatError", "nested too deeply", f"a header nested {DEEP} deep (was a RecursionError)")
def _(data):
    return raw_header(b'{"x":' + b"[" * DEEP + b"]" * DEEP + b"}")


@attack("deep_manifest.jpw", "ManifestError", "nested too deeply", f"a manifest nested {DEEP} deep")
def _(data):
    text = '{"format":"jpegweights","version":2,"tensors":{},"x":' + "[" * DEEP + "]" * DEEP + "}"
    from jpegweights.codec.container import digest

    return raw_header(
        json.dumps({"__metadata__": {"jpegweights": text, "jpegweights.sha256": digest(text, b"")}}).encode()
    )


@attack("long_integer.jpw", "FormatError", "digits", "an integer of 5,000 digits (was a ValueError)")
def _(data):
    header, body = header_of(data)
    header["h.bias"]["data_offsets"] = [0, 0]
    text = json.dumps(header).replace('"data_offsets": [0, 0]', '"data_offsets": [0, ' + "9" * 5000 + "]")
    return raw_header(text.encode(), body)


@attack(
    "duplicate_keys.jpw",
    "FormatError",
    "duplicate key",
    "a tensor named twice in the header (JSON keeps the last one silently)",
)
def _(data):
    header, body = header_of(data)
    text = json.dumps(header)
    entry = json.dumps(header["h.bias"])
    return raw_header(text[:-1].encode() + b', "h.bias": ' + entry.encode() + b"}", body)


@attack(
    "lone_surrogate.jpw",
    "FormatError",
    "lone surrogate",
    "a \\ud800 escape in the header: not text (was a UnicodeEncodeError when hashed)",
)
def _(data):
    header, body = header_of(data)
    text = json.dumps(header).replace('"format', '"\\ud800format', 1)
    return raw_header(text.encode(), body)


@attack("nan_literal.jpw", "FormatError", "not valid JSON|NaN", "a NaN literal in the header")
def _(data):
    return raw_header(b'{"x": NaN}')


# ---------------------------------------------------------------- integrity and version


@attack("flipped_byte.jpw", "ChecksumError", "digest mismatch", "one byte of a JPEG stream flipped")
def _(data):
    b = bytearray(data)
    b[-100] ^= 0x01
    return bytes(b)


@attack("version_1.jpw", "VersionError", "version 1 is not supported", "a package of format version 1 (no digest)")
def _(data):
    header, body = header_of(data)
    manifest = json.loads(header["__metadata__"]["jpegweights"])
    manifest["version"] = 1
    header["__metadata__"] = {"jpegweights": json.dumps(manifest)}
    return raw_header(json.dumps(header).encode(), body)


@attack("progressive_jpeg.jpw", "JpegDecodeError", "not baseline", "an atlas coded as progressive JPEG")
def _(data):
    import io

    import numpy as np
    from PIL import Image

    def edit(s):
        stream = s["m.weight/jpeg/0"].numpy().tobytes()
        image = np.asarray(Image.open(io.BytesIO(stream)))
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", progressive=True)
        s["m.weight/jpeg/0"] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)

    return rewrite(data, edit_stored=edit)


@attack(
    "outliers_out_of_range.jpw",
    "ManifestError",
    "outlier positions must increase strictly",
    "a value kept apart at a position past the end of its tensor",
)
def _(data):
    stored, manifest = read(data)
    entry = manifest["tensors"]["m.weight"]
    entry |= {"outliers": "m.weight/outliers", "outlier_values": "m.weight/outlier_values"}
    extra = {
        entry["outliers"]: torch.tensor([96 * 200], dtype=torch.int32),
        entry["outlier_values"]: torch.tensor([1.0], dtype=torch.float16),
    }
    return write({**stored, **extra}, manifest)


# ---------------------------------------------------------------- the packed container (version 4)


def repack(
    edit_index: Callable[[dict], None] | None = None,
    deflated: bytes | None = None,
    extra: dict | None = None,
    hidden: bytes = b"",
) -> bytes:
    """The packed good package after editing its index (or replacing its deflated bytes, adding
    outer tensors or bytes after the data), signed again."""
    from jpegweights.codec.container import DATA, DIGEST_KEY, INDEX, PACKED_KEY, digest

    header, body = header_of(base(compact=True))
    begin, end = header[INDEX]["data_offsets"]
    data = body[header[DATA]["data_offsets"][0] :] + hidden
    if deflated is None:
        index = json.loads(zlib.decompress(body[begin:end]))
        if edit_index:
            edit_index(index)
        deflated = zlib.compress(json.dumps(index).encode(), 9)
    deflated += bytes(-len(deflated) % 8)
    parts = {INDEX: deflated, DATA: data, **(extra or {})}
    outer, position = {}, 0
    for name, part in parts.items():
        outer[name] = {"dtype": "U8", "shape": [len(part)], "data_offsets": [position, position + len(part)]}
        position += len(part)
    body = b"".join(parts.values())
    return raw_header(
        json.dumps({"__metadata__": {PACKED_KEY: "zlib", DIGEST_KEY: digest("", body)}, **outer}).encode(), body
    )


@attack(
    "packed_bomb.jpw",
    "HeaderTooLargeError",
    "inflates to more than",
    "a packed index of 64 KB that inflates past 16 MiB",
)
def _(data):
    return repack(deflated=zlib.compress(b" " * (64 << 20), 9))


@attack("packed_not_zlib.jpw", "FormatError", "not zlib data", "a packed index that is not zlib data")
def _(data):
    return repack(deflated=b"not a zlib stream")


@attack(
    "packed_trailing.jpw", "FormatError", "after the packed index", "bytes hidden after the packed index's zlib stream"
)
def _(data):
    return repack(deflated=zlib.compress(b'{"manifest":{},"tensors":{}}') + b"hidden data")


@attack(
    "packed_version_3.jpw",
    "VersionError",
    "packed file holds a version 4 manifest",
    "a version 3 manifest in the packed container",
)
def _(data):
    return repack(lambda index: index["manifest"].update(version=3))


@attack("unpacked_version_4.jpw", "ManifestError", "must be packed", "a version 4 manifest in the plain container")
def _(data):
    return rewrite(data, lambda m: m.update(version=4))


@attack(
    "packed_extra_tensor.jpw",
    "FormatError",
    "holds exactly the tensors",
    "a third tensor beside the index and the data",
)
def _(data):
    return repack(extra={"hidden": b"hidden data"})


@attack(
    "packed_hidden_bytes.jpw", "FormatError", "lays out", "bytes hidden after the last tensor the packed index lays out"
)
def _(data):
    return repack(hidden=b"hidden data")


@attack(
    "packed_scale_shape.jpw",
    "ManifestError",
    "scale and offset must both have shape",
    "a stored range of shape [5, 2] for a tensor of 10 rows",
)
def _(data):
    return repack(lambda index: index["tensors"]["h.weight/scale"].update(shape=[5, 2]))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    good = base()
    (OUT / "good.jpw").write_bytes(good)
    (OUT / "good_packed.jpw").write_bytes(base(compact=True))
    expected = {}
    for name, spec in ATTACKS.items():
        (OUT / name).write_bytes(spec["make"](good))
        expected[name] = {k: v for k, v in spec.items() if k != "make"}
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    lines = ["# Crafted packages the codec must refuse", "",
             "Written by `attacks/make_codec_attacks.py`; checked by `tests/codec/test_attacks.py`.",
             ("Stage `decode`: `codec.decode` and `codec.load_file` raise; stage `build`: the tensors decode "
              "(the reader is"),
             "model-free) and `handlers.build(architecture, state)` raises (a `handlers` error).", "",
             "| file | attack | stage | raises | message matches |", "|---|---|---|---|---|"]  # fmt: skip
    for name, e in expected.items():
        match = e["match"].replace("|", "\\|")  # a table cell
        lines.append(f"| `{name}` | {e['what']} | {e['stage']} | `{e['error']}` | `{match}` |")
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(ATTACKS)} attacks, good.jpw and good_packed.jpw to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""docs/format.schema.json describes the files the codec writes: the golden headers, every bundled
package (headers read by hand, manifests through the codec's own reader), and it refuses what the
format forbids (an unknown coding, an extra field, an unknown dtype, a version 4 manifest outside
the packed container)."""

from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path

import jsonschema_rs
import pytest

from jpegweights.codec import load_manifest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "format.schema.json").read_text())
GOLDEN = Path(__file__).parent / "golden"
PACKAGES = sorted(ROOT.glob("models/*/model*.jpw"))


def validator(definition: str) -> jsonschema_rs.Draft202012Validator:
    """A validator for one of the schema's ``$defs`` (the schema's root is ``header``)."""
    return jsonschema_rs.Draft202012Validator(
        {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{definition}"}
    )


def header_of(data: bytes) -> dict:
    """The safetensors header, parsed by hand: 8 bytes of length, then JSON."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def index_of(data: bytes) -> dict:
    """A packed file's index, inflated by hand from the ``jpegweights/index`` tensor."""
    (n,) = struct.unpack("<Q", data[:8])
    begin, end = header_of(data)["jpegweights/index"]["data_offsets"]
    return json.loads(zlib.decompressobj().decompress(data[8 + n + begin : 8 + n + end]))


def assert_valid(definition: str, document: dict) -> None:
    errors = [f"{e.instance_path}: {e.message}"[:300] for e in validator(definition).iter_errors(document)]
    assert not errors, errors[:5]


def test_the_schema_is_a_valid_draft_2020_12_schema():
    assert jsonschema_rs.meta.is_valid(SCHEMA)


def test_golden_header_matches_the_schema():
    header = header_of((GOLDEN / "raw_int8.header").read_bytes())
    assert_valid("header", header)
    assert_valid("plain_manifest", json.loads(header["__metadata__"]["jpegweights"]))


def test_golden_version_2_package_matches_the_schema():
    data = (GOLDEN / "version2-mnist-mlp.jpw").read_bytes()
    assert_valid("header", header_of(data))
    manifest = load_manifest(data)
    assert manifest["version"] == 2
    assert_valid("plain_manifest", manifest)


@pytest.mark.parametrize("path", PACKAGES, ids=[str(p.relative_to(ROOT)) for p in PACKAGES])
def test_bundled_package_matches_the_schema(path: Path):
    data = path.read_bytes()
    header = header_of(data)
    assert_valid("header", header)
    manifest = load_manifest(data)
    if "jpegweights.packed" in header["__metadata__"]:
        index = index_of(data)
        assert_valid("index", index)
        assert index["manifest"] == manifest
    else:
        assert_valid("plain_manifest", manifest)


def test_every_coding_and_layout_is_exercised():
    """The packages above hold raw, int8 and both JPEG layouts, so the schema is tried on each."""
    manifests = [load_manifest(p.read_bytes()) for p in PACKAGES] + [
        load_manifest((GOLDEN / "version2-mnist-mlp.jpw").read_bytes())
    ]
    seen = {(e["coding"], e.get("layout")) for m in manifests for e in m["tensors"].values()}
    assert {("raw", None), ("int8", None), ("jpeg", "rows"), ("jpeg", "matrix")} <= seen


def golden_manifest() -> dict:
    return load_manifest((GOLDEN / "version2-mnist-mlp.jpw").read_bytes())


def first(manifest: dict, coding: str) -> dict:
    return next(e for e in manifest["tensors"].values() if e["coding"] == coding)


def unknown_coding(m: dict) -> None:
    first(m, "int8")["coding"] = "int4"


def extra_entry_field(m: dict) -> None:
    first(m, "raw")["note"] = "x"


def extra_atlas_field(m: dict) -> None:
    first(m, "jpeg")["atlases"][0]["note"] = "x"


def bad_dtype(m: dict) -> None:
    first(m, "raw")["dtype"] = "F8"


def integer_dtype_for_jpeg(m: dict) -> None:
    first(m, "jpeg")["dtype"] = "I32"


def quality_out_of_range(m: dict) -> None:
    first(m, "jpeg")["quality"] = 101


def one_outlier_field(m: dict) -> None:
    first(m, "jpeg")["outliers"] = "x/outliers"


def version_4_in_a_plain_file(m: dict) -> None:
    m["version"] = 4


def unknown_version(m: dict) -> None:
    m["version"] = 5


@pytest.mark.parametrize(
    "breaks",
    [
        unknown_coding,
        extra_entry_field,
        extra_atlas_field,
        bad_dtype,
        integer_dtype_for_jpeg,
        quality_out_of_range,
        one_outlier_field,
        version_4_in_a_plain_file,
        unknown_version,
    ],
)
def test_schema_refuses_a_bad_manifest(breaks):
    manifest = golden_manifest()
    assert_valid("plain_manifest", manifest)  # the change below is what breaks it
    broken = copy.deepcopy(manifest)
    breaks(broken)
    assert not validator("plain_manifest").is_valid(broken)


def test_schema_refuses_a_bad_header():
    header = header_of((GOLDEN / "raw_int8.header").read_bytes())
    name = next(k for k in header if k != "__metadata__")
    for field, value in (("dtype", "F8"), ("extra", 1), ("shape", [1] * 17)):
        broken = copy.deepcopy(header)
        broken[name][field] = value
        assert not validator("header").is_valid(broken), field
    no_digest = copy.deepcopy(header)
    del no_digest["__metadata__"]["jpegweights.sha256"]
    assert not validator("header").is_valid(no_digest)


def test_schema_refuses_a_packed_header_with_a_manifest_or_a_third_tensor():
    packed = next((p for p in PACKAGES if "jpegweights.packed" in header_of(p.read_bytes())["__metadata__"]), None)
    if packed is None:
        pytest.skip("no packed package bundled")
    header = header_of(packed.read_bytes())
    with_manifest = copy.deepcopy(header)
    with_manifest["__metadata__"]["jpegweights"] = "{}"
    third = copy.deepcopy(header)
    third["other"] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    for broken in (with_manifest, third):
        assert not validator("header").is_valid(broken)

"""Every malformed input raises a specific CodecError subclass whose message names the problem."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from jpegweights.codec import (
    ChecksumError,
    CodecError,
    ConfigError,
    ExpansionError,
    EncodeConfig,
    FormatError,
    HeaderTooLargeError,
    ImageTooLargeError,
    InvalidTensorError,
    JpegDecodeError,
    ManifestError,
    TruncatedError,
    VersionError,
    decode,
    encode,
)
from jpegweights.codec.container import MAX_HEADER_BYTES

from .helpers import rewrite


@pytest.fixture(scope="module")
def package() -> bytes:
    g = torch.Generator().manual_seed(0)
    state = {
        "fc.weight": torch.randn(64, 784, generator=g) * 0.05,
        "fc.bias": torch.zeros(64),
        "head.weight": torch.randn(10, 64, generator=g),
    }
    return encode(
        state, EncodeConfig.preset("seed", coding_for={"fc.weight": "jpeg"})
    )  # the plain container, edited below


def atlas_key(data: bytes) -> str:
    from jpegweights.codec.container import read

    return read(data)[1]["tensors"]["fc.weight"]["atlases"][0]["key"]


@pytest.mark.parametrize("cut", [0, 5, 8, 100, -1])
def test_truncated_file(package, cut):
    data = package[:cut] if cut >= 0 else package[:-1]
    with pytest.raises(TruncatedError, match="bytes|shorter|ends at"):
        decode(data)


def test_oversized_header():
    data = struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}"
    with pytest.raises(HeaderTooLargeError, match="exceeds the limit"):
        decode(data)


def test_header_not_json():
    with pytest.raises(FormatError, match="not valid JSON"):
        decode(struct.pack("<Q", 4) + b"{{{{")


def test_holes_between_tensors(package):
    (n,) = struct.unpack("<Q", package[:8])
    header = json.loads(package[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__" and header[k]["data_offsets"][0] > 0)
    header[name]["data_offsets"][0] += 1
    body = json.dumps(header).encode()
    with pytest.raises(FormatError, match=f"{name}"):
        decode(struct.pack("<Q", len(body)) + body + package[8 + n :])


def test_not_a_jpegweights_file():
    from safetensors.torch import save

    with pytest.raises(ManifestError, match="not a jpegweights file"):
        decode(save({"x": torch.zeros(3)}))


def test_unknown_format_version(package):
    data = rewrite(package, lambda m: m.update(version=99))
    with pytest.raises(VersionError, match="version 99 is not supported"):
        decode(data)


def test_manifest_shape_disagrees_with_data(package):
    data = rewrite(package, lambda m: m["tensors"]["fc.bias"].update(shape=[65]))
    with pytest.raises(ManifestError, match="'fc.bias'.*shape"):
        decode(data)


def test_manifest_refers_to_missing_tensor(package):
    data = rewrite(package, edit_stored=lambda s: s.pop("fc.weight/scale"))
    with pytest.raises(ManifestError, match="'fc.weight'.*missing stored tensor 'fc.weight/scale'"):
        decode(data)


def test_atlas_outside_the_tensor(package):
    def edit(m):
        m["tensors"]["fc.weight"]["shape"] = [32, 784]

    with pytest.raises(ManifestError, match="'fc.weight'"):
        decode(rewrite(package, edit))


def test_unknown_coding(package):
    data = rewrite(package, lambda m: m["tensors"]["fc.weight"].update(coding="webp"))
    with pytest.raises(ManifestError, match="'fc.weight'.*unknown coding 'webp'"):
        decode(data)


def test_jpeg_that_fails_to_decode(package):
    key = atlas_key(package)

    def corrupt(stored):
        b = bytearray(stored[key].numpy().tobytes())
        dht = b.find(b"\xff\xc4")
        b[dht + 4 : dht + 40] = b"\xff" * 36  # a bogus Huffman table
        stored[key] = torch.frombuffer(b, dtype=torch.uint8)

    with pytest.raises(JpegDecodeError, match=f"'fc.weight'.*{key}"):
        decode(rewrite(package, edit_stored=corrupt))


def test_jpeg_stream_that_is_not_a_jpeg(package):
    key = atlas_key(package)

    def garbage(stored):
        stored[key] = torch.full((500,), 7, dtype=torch.uint8)

    with pytest.raises(JpegDecodeError, match="'fc.weight'.*not a JPEG"):
        decode(rewrite(package, edit_stored=garbage))


def test_jpeg_header_claiming_a_huge_image(package):
    key = atlas_key(package)

    def bomb(stored):
        b = bytearray(stored[key].numpy().tobytes())
        sof = b.find(b"\xff\xc0")
        b[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
        stored[key] = torch.frombuffer(b, dtype=torch.uint8)

    with pytest.raises(ImageTooLargeError, match="'fc.weight'.*65000x65000"):
        decode(rewrite(package, edit_stored=bomb))


def test_manifest_claiming_a_huge_image_from_few_bytes(package):
    def bomb(m):
        t = m["tensors"]["fc.weight"]
        t["shape"] = [60000, 60000]
        t["layout"], t["tile"] = "matrix", None
        t["atlases"] = [{"key": t["atlases"][0]["key"], "row": 0, "col": 0, "height": 60000, "width": 60000}]

    def streams(s):
        for key in [k for k in s if k.startswith("fc.weight/jpeg/") and k != atlas_key(package)]:
            del s[key]
        s.update(
            {
                "fc.weight/scale": torch.zeros(60000, dtype=torch.float16),
                "fc.weight/offset": torch.zeros(60000, dtype=torch.float16),
            }
        )

    data = rewrite(package, bomb, streams)
    with pytest.raises(ImageTooLargeError, match="'fc.weight'.*decompression bomb"):
        decode(data)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_in_input(bad):
    t = torch.zeros(8, 8)
    t[3, 4] = bad
    with pytest.raises(InvalidTensorError, match="'layer.weight': 1 NaN/Inf"):
        encode({"layer.weight": t})


def test_unsupported_dtype_and_non_tensor():
    with pytest.raises(InvalidTensorError, match="'z'.*unsupported dtype"):
        encode({"z": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(InvalidTensorError, match="'n'.*expected a torch.Tensor"):
        encode({"n": [1, 2, 3]})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quality": 0}, "quality must be an integer in 1..100"),
        ({"quality": 101}, "quality must be an integer in 1..100"),
        ({"quality_for": {"fc.*": 500}}, "quality for 'fc.\\*' must be"),
        ({"outliers": 0}, "outliers must be a positive number"),
        ({"outliers": "3"}, "outliers must be a positive number"),
        ({"raw_dtype": "int8"}, "raw_dtype must be one of"),
        ({"coding": "png"}, "coding must be one of"),
        ({"layout": "rows:0x5"}, "layout must be"),
        ({"qtable": "fancy"}, "qtable must be one of"),
        ({"ranges": "column"}, "ranges must be one of"),
        ({"max_atlas_pixels": 10}, "max_atlas_pixels"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EncodeConfig(**kwargs)


def test_layout_that_does_not_fit_the_tensor():
    with pytest.raises(ConfigError, match="'w'.*rows:28x28 needs rows of 784 values"):
        encode({"w": torch.zeros(64, 100)}, EncodeConfig(coding="jpeg", layout="rows:28x28"))


def test_architecture_is_opaque_to_the_codec():
    """Decoding never depends on understanding ``architecture``: a layer type this version does
    not know still decodes; only building the module refuses it."""
    from jpegweights.codec import load_manifest
    from jpegweights.handlers import ArchitectureError, build

    spec = {"input_shape": [2], "layers": [{"type": "Transformer", "heads": 8}]}
    data = encode({"w": torch.ones(2)}, architecture=spec)
    assert torch.equal(decode(data)["w"], torch.ones(2)) and load_manifest(data)["architecture"] == spec
    with pytest.raises(ArchitectureError, match="unknown type 'Transformer'"):
        build(spec)
    with pytest.raises(ConfigError, match="architecture is not JSON"):
        encode({"w": torch.ones(2)}, architecture={"f": float("nan")})


def test_every_error_is_a_codec_error():
    for cls in (
        ConfigError,
        InvalidTensorError,
        FormatError,
        TruncatedError,
        HeaderTooLargeError,
        VersionError,
        ChecksumError,
        ManifestError,
        JpegDecodeError,
        ImageTooLargeError,
    ):
        assert issubclass(cls, CodecError)


@pytest.fixture(scope="module")
def with_outliers() -> bytes:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 784, generator=g)
    w[5, 9], w[40, 3] = 30.0, -25.0
    return encode(
        {"fc.weight": w}, EncodeConfig(coding="jpeg", qtable="flat", ranges="row", outliers=3.0, compact=False)
    )


def _outliers_edit(field, value):
    def edit(stored):
        stored[f"fc.weight/{field}"] = value(stored[f"fc.weight/{field}"])

    return edit


@pytest.mark.parametrize("edit, message", [
    (_outliers_edit("outliers", lambda t: t.flip(0)), "must increase strictly"),
    (_outliers_edit("outliers", lambda t: torch.cat([t[:-1], torch.tensor([64 * 784], dtype=torch.int32)])),
     "must increase strictly within 0..50175"),
    (_outliers_edit("outliers", lambda t: t.to(torch.int64)), "has dtype torch.int64"),
    (_outliers_edit("outlier_values", lambda t: torch.full_like(t, float("nan"))), "NaN, Inf"),
    (_outliers_edit("outlier_values", lambda t: t[:-1]), "has shape"),
])  # fmt: skip
def test_bad_outliers_are_refused_before_decoding(with_outliers, edit, message):
    with pytest.raises(ManifestError, match=f"'fc.weight'.*{message}"):
        decode(rewrite(with_outliers, edit_stored=edit))


def test_outlier_fields_come_in_pairs(with_outliers):
    def drop(m):
        del m["tensors"]["fc.weight"]["outlier_values"]

    with pytest.raises(ManifestError, match="come together"):
        decode(rewrite(with_outliers, drop, lambda s: s.pop("fc.weight/outlier_values")))


def resigned(data: bytes) -> bytes:
    """``data`` with its digest recomputed over whatever it now holds, as an attacker would."""
    from jpegweights.codec.container import DIGEST_KEY, METADATA_KEY

    from .fuzz import pack, sha256, split

    header, body = split(data)
    meta = header["__metadata__"]
    meta[DIGEST_KEY] = sha256(meta.get(METADATA_KEY, ""), body)
    return pack(header, body)


@pytest.mark.parametrize("compact", [False, True])
def test_a_large_package_reports_a_bad_digest_before_what_it_broke(compact):
    """From PARALLEL_DIGEST_BYTES of data the digest is computed while the header is parsed;
    a mismatch must still be what is reported, not the error the corruption caused."""
    from jpegweights.codec.container import PARALLEL_DIGEST_BYTES, read

    state = {"w": torch.linspace(-1, 1, 1 << 19).reshape(512, 1024), "b": torch.zeros(512)}
    data = bytearray(encode(state, EncodeConfig(coding="raw", raw_dtype="same", compact=compact)))
    assert len(data) > PARALLEL_DIGEST_BYTES
    assert torch.equal(decode(bytes(data))["w"], state["w"])
    body = 8 + struct.unpack("<Q", data[:8])[0]
    flipped = bytearray(data)
    flipped[-1] ^= 1  # the last tensor's last byte: nothing but the digest can see it
    with pytest.raises(ChecksumError, match="digest mismatch"):
        read(bytes(flipped))
    broken = bytearray(data)
    if compact:
        broken[body + 2] ^= 0xFF  # inside the deflated index: it no longer inflates
    else:
        at = data.index(b'{\\"', 0, body)  # the manifest's opening brace, inside its JSON string
        broken[at] = ord("[")
    with pytest.raises(ChecksumError, match="digest mismatch"):
        read(bytes(broken))
    # the same corruption, re-signed, is caught by what it broke (so the test above is not vacuous)
    with pytest.raises(FormatError) as caught:
        read(resigned(bytes(broken)))
    assert not isinstance(caught.value, ChecksumError)


def test_decode_reports_a_bad_digest_rather_than_the_broken_jpeg_it_found(tmp_path):
    """``decode`` and ``load_file`` decode while the digest of a large package is computed: a
    JPEG that corruption broke must still be reported as corruption."""
    from jpegweights.codec import load_file
    from jpegweights.codec.container import PARALLEL_DIGEST_BYTES, read

    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(1024, 2048, generator=g)}
    data = encode(state, EncodeConfig(coding="jpeg", quality=95))
    assert len(data) > PARALLEL_DIGEST_BYTES
    stored, manifest = read(data)
    stream = stored[manifest["tensors"]["w"]["atlases"][0]["key"]]
    at = data.index(stream[:64].numpy().tobytes()) + stream.numel() // 2
    broken = bytearray(data)
    broken[at : at + 4096] = bytes(4096)  # the middle of the JPEG stream zeroed
    with pytest.raises(JpegDecodeError):  # what it breaks, once re-signed
        decode(resigned(bytes(broken)))
    (tmp_path / "broken.jpw").write_bytes(broken)
    for load in (lambda: decode(bytes(broken)), lambda: load_file(tmp_path / "broken.jpw")):
        with pytest.raises(ChecksumError, match="digest mismatch"):
            load()


@pytest.mark.parametrize("compact", [False, True])
def test_any_byte_change_of_a_large_package_is_refused_as_corruption(compact):
    """Seeded bit flips anywhere in a package over 1 MiB, which ``decode`` decodes beside its
    digest: each one is refused with a ``FormatError`` (almost always the ``ChecksumError``),
    never a ``JpegDecodeError`` from a broken stream or anything else, and never decodes."""
    import random

    from jpegweights.codec.container import PARALLEL_DIGEST_BYTES

    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(1024, 1024, generator=g), "v": torch.randn(256, 512, generator=g), "b": torch.zeros(1024)}
    data = encode(
        state, EncodeConfig(coding_for={"w": "jpeg", "v": "raw"}, quality=90, raw_dtype="same", compact=compact)
    )
    assert len(data) > PARALLEL_DIGEST_BYTES
    rng = random.Random(0)
    refused: dict[str, int] = {}
    for _ in range(40):
        changed = bytearray(data)
        changed[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        with pytest.raises(FormatError) as caught:
            decode(bytes(changed))
        refused[type(caught.value).__name__] = refused.get(type(caught.value).__name__, 0) + 1
    assert refused.get("ChecksumError", 0) >= 30, refused  # most flips land in the data section


def test_a_package_that_would_decode_to_far_more_than_it_brings_is_refused(monkeypatch):
    """A constant tensor codes at about 944 float32 bytes per stored byte: over the limit, refused
    before any atlas is decoded; a random one at the lowest quality (546x) still decodes."""
    from jpegweights.codec import manifest

    g = torch.Generator().manual_seed(0)
    flat, noise = (
        encode({"w": t}, EncodeConfig(quality=1))
        for t in (torch.full((512, 512), 0.3), torch.randn(512, 512, generator=g))
    )
    monkeypatch.setattr(manifest, "EXPANSION_ALLOWANCE", 0)
    with pytest.raises(ExpansionError, match=r"decodes to 1,048,576 bytes from [\d,]+: more than 768 per byte"):
        decode(flat)
    assert decode(noise)["w"].shape == (512, 512)
    monkeypatch.setattr(manifest, "EXPANSION_ALLOWANCE", 1 << 20)  # within the allowance
    assert decode(flat)["w"].shape == (512, 512)


def test_a_packed_index_that_inflates_far_beyond_its_size_is_refused_before_it_is_parsed():
    """A chain of 100,000 ReLUs deflates to about 4 KB: 2 MB of JSON, 35 MB once parsed."""
    from jpegweights.codec.container import INFLATION_ALLOWANCE, MAX_INFLATION

    layers = [{"type": "Flatten"}] + [{"type": "ReLU"}] * 100_000
    data = encode({"w": torch.ones(4)}, architecture={"input_shape": [4], "layers": layers})
    with pytest.raises(HeaderTooLargeError, match=r"the packed index of [\d,]+ bytes inflates to more than"):
        decode(data)
    assert MAX_INFLATION * len(data) + INFLATION_ALLOWANCE < 2_000_000
    short = encode({"w": torch.ones(4)}, architecture={"input_shape": [4], "layers": layers[:1000]})
    assert decode(short)["w"].equal(torch.ones(4))  # MAX_LAYERS of them

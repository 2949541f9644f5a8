"""``StreamDecoder``: a package fed in pieces decodes to exactly what ``decode`` gives, each atlas
as soon as its bytes are in, and gives nothing for a file that is cut short or corrupt."""

from __future__ import annotations

import threading

import pytest
import torch

from jpegweights.codec import (
    ChecksumError,
    EncodeConfig,
    FormatError,
    StreamDecoder,
    TruncatedError,
    decode,
    encode,
)
from jpegweights.codec import jpeg as jpeg_stream


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 200, generator=g)
    w[3, 7] = 40.0  # an outlier, kept apart
    return {
        "fc.weight": w,
        "emb.weight": torch.randn(300, 64, generator=g),
        "a.weight": torch.randn(8, 8, generator=g),
        "fc.bias": torch.randn(96, generator=g),
        "steps": torch.tensor(7),
    }


CONFIGS = {
    "packed": EncodeConfig(quality=60, max_atlas_pixels=4096, outliers=6.0, coding_for={"a.weight": "int8"}),
    "plain": EncodeConfig(quality=60, max_atlas_pixels=4096, compact=False, coding_for={"a.weight": "int8"}),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def package(request) -> bytes:
    return encode(state(), CONFIGS[request.param])


def fed(data: bytes, step: int, decoder: StreamDecoder | None = None) -> tuple[dict, dict]:
    decoder = decoder or StreamDecoder()
    with decoder:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
        return decoder.finish()


@pytest.mark.parametrize("step", [1, 13, 4096, 1 << 30])
def test_any_cut_into_pieces_decodes_to_what_decode_gives(package, step):
    expected = decode(package)
    got, manifest = fed(package, step)
    assert list(got) == list(expected) == list(manifest["tensors"])
    for name, t in expected.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


def test_the_packages_cover_every_coding(package):
    _, manifest = fed(package, 1 << 30)
    entries = manifest["tensors"].values()
    assert {e["coding"] for e in entries} == {"jpeg", "int8", "raw"}
    assert sum(len(e.get("atlases", ())) for e in entries) > 4
    if manifest["version"] == 4:
        assert any("outliers" in e for e in entries)


def test_atlases_decode_while_the_rest_is_still_arriving(package, monkeypatch):
    """All but the last byte fed: every atlas but the last has been decoded, before ``finish``.
    (The writer lays uint8 tensors out by name: ``fc.weight``'s last atlas ends the file.)"""
    _, manifest = fed(package, 1 << 30)
    atlases = sum(len(e.get("atlases", ())) for e in manifest["tensors"].values())
    decoded, enough = [], threading.Event()
    real = jpeg_stream.decode

    def counting(data):
        image = real(data)
        decoded.append(image)
        if len(decoded) >= atlases - 1:
            enough.set()
        return image

    monkeypatch.setattr(jpeg_stream, "decode", counting)
    with StreamDecoder() as decoder:
        decoder.feed(package[:-1])
        assert enough.wait(60), f"{len(decoded)} of {atlases} atlases decoded before the last byte"
        assert len(decoded) == atlases - 1  # the last one waits for its last byte
        decoder.feed(package[-1:])
        state, _ = decoder.finish()
    assert len(decoded) == atlases and set(state) == set(decode(package))


def test_the_manifest_is_announced_once_it_has_arrived(package):
    seen = []
    with StreamDecoder(on_manifest=seen.append) as decoder:
        for i in range(0, len(package), 64):
            decoder.feed(package[i : i + 64])
            if seen:
                break
        assert decoder.received < len(package), "announced before the data had all arrived"
        assert set(seen[0]["tensors"]) == set(state())


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.05, 0.3, 0.7, 0.99])
def test_a_file_cut_short_gives_nothing(package, fraction):
    cut = int(len(package) * fraction)
    with StreamDecoder() as decoder:
        decoder.feed(package[:cut])
        with pytest.raises(TruncatedError, match=f"ended after {cut:,} bytes"):
            decoder.finish()


def test_a_file_cut_one_byte_short_gives_nothing(package):
    with StreamDecoder() as decoder:
        decoder.feed(package[:-1])
        with pytest.raises(TruncatedError):
            decoder.finish()


def test_any_changed_byte_after_the_header_is_reported_as_corruption(package):
    """Whatever else the change breaks (an atlas that no longer decodes, a range that is NaN, an
    index that does not inflate), the digest mismatch is what ``finish`` raises."""
    start = len(package) - sum(t.nbytes for t in _stored(package))
    for position in range(start, len(package), max(1, (len(package) - start) // 61)):
        bad = bytearray(package)
        bad[position] ^= 0x5A
        with pytest.raises(ChecksumError):
            fed(bytes(bad), 997)


def _stored(data: bytes) -> list[torch.Tensor]:
    from jpegweights.codec.container import read_pending

    return list(read_pending(data)[0].values())


def test_bytes_past_the_end_are_refused(package):
    with StreamDecoder() as decoder, pytest.raises(FormatError, match="past the"):
        decoder.feed(package + b"\0")


def test_a_file_over_max_bytes_is_refused_from_its_header(package):
    with StreamDecoder(max_bytes=len(package) - 1) as decoder, pytest.raises(FormatError, match="over the limit"):
        decoder.feed(package)


def test_closing_midway_stops_its_threads(package):
    decoder = StreamDecoder(workers=2)
    decoder.feed(package[: len(package) * 3 // 4])
    decoder.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("jpegweights-stream")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda(package):
    got, _ = fed(package, 4096, StreamDecoder(device="cuda"))
    expected = decode(package)
    for name, t in expected.items():  # nvJPEG may differ from libjpeg-turbo by a grey level
        assert got[name].device.type == "cuda" and torch.allclose(got[name].cpu().float(), t.float(), atol=0.1)

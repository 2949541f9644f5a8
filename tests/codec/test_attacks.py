"""Every crafted package in attacks/codec is refused with the documented exception and message.

The files are written by ``attacks/make_codec_attacks.py``; ``expected.json`` beside them says
what each must raise. Attacks that need the file system (a FIFO, a sparse 3 GB file) are made
here, at test time.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest

from jpegweights import codec, handlers
from jpegweights.codec import StreamDecoder, decode, load_file, load_package
from jpegweights.handlers import build

ATTACKS = Path(__file__).resolve().parents[2] / "attacks" / "codec"
EXPECTED = json.loads((ATTACKS / "expected.json").read_text())


def test_every_attack_file_is_listed_and_the_good_package_decodes():
    assert sorted(p.name for p in ATTACKS.glob("*.jpw")) == sorted([*EXPECTED, "good.jpw", "good_packed.jpw"])
    state, manifest = load_package(ATTACKS / "good.jpw")
    assert set(state) == {"m.weight", "t.weight", "h.weight", "h.bias"}
    assert {e["coding"] for e in manifest["tensors"].values()} == {"jpeg", "int8", "raw"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_attack_is_refused(name):
    spec = EXPECTED[name]
    error = getattr(handlers if spec["stage"] == "build" else codec, spec["error"])
    path = ATTACKS / name
    if spec["stage"] == "build":  # the reader is model-free: tensors decode, the module does not build
        state, manifest = load_package(path)
        with pytest.raises(error, match=spec["match"]):
            build(manifest["architecture"], state)
        return
    for read in (lambda: decode(path.read_bytes()), lambda: load_file(path), lambda: streamed(path.read_bytes())):
        with pytest.raises(error, match=spec["match"]):
            read()


def streamed(data: bytes, step: int = 1000) -> dict:
    with StreamDecoder() as decoder:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
        return decoder.finish()[0]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.jpw"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    with pytest.raises(codec.FormatError, match="not a regular file"):
        load_file(fifo)


def test_a_device_is_refused():
    with pytest.raises(codec.FormatError, match="not a regular file"):
        load_file("/dev/zero")


def rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_a_3_gb_sparse_file_is_refused_from_its_header_alone(tmp_path):
    path = tmp_path / "sparse.jpw"
    path.write_bytes((ATTACKS / "good.jpw").read_bytes())
    os.truncate(path, 3 << 30)  # a valid package followed by 3 GB of (sparse) zeros
    before = rss_kib()
    with pytest.raises(codec.FormatError, match="trailing bytes"):
        load_file(path)
    assert rss_kib() - before < 64 * 1024  # the 3 GB were never read


def test_a_package_over_max_bytes_is_refused(tmp_path):
    path = tmp_path / "m.jpw"
    path.write_bytes((ATTACKS / "good.jpw").read_bytes())
    with pytest.raises(codec.FormatError, match="over the limit of 1000"):
        load_file(path, max_bytes=1000)


def test_every_single_byte_change_of_a_package_is_refused():
    """Each byte of a small package, changed to another value: never decoded silently."""
    good = (ATTACKS / "good.jpw").read_bytes()
    escaped = []
    for position in range(0, len(good), 7):  # every 7th byte, about 1,700 positions
        data = bytearray(good)
        data[position] ^= 0x5A if position % 2 else 0x01
        try:
            decode(bytes(data))
        except codec.CodecError:
            continue
        escaped.append(position)
    assert escaped == []

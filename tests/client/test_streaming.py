"""The client decodes a package while it downloads (``load``, ``state_dict``, ``download(check=
True)``): the tensors are those of the whole file, and a corrupt or truncated stream leaves no
model, no cache entry and no part file behind."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import httpx
import pytest
import torch

from jpegweights.client import AsyncClient, Client, CodecError, IntegrityError, TransportError
from jpegweights.codec import EncodeConfig, decode, encode
from jpegweights.codec import jpeg as jpeg_stream
from tests.codec.helpers import rewrite

g = torch.Generator().manual_seed(2)
STATE = {"a.weight": torch.randn(200, 300, generator=g), "b.weight": torch.randn(64, 64, generator=g)}
PACKAGE = encode(STATE, EncodeConfig(quality=50, max_atlas_pixels=8192, compact=False))  # for rewrite()


def etag(data: bytes) -> str:
    return '"sha256-' + hashlib.sha256(data).hexdigest() + '"'


def serving(data: bytes, tag: str | None = None, cut_at: int | None = None, before_last_byte=None):
    """A /weights handler that sends ``data`` in 4 KiB chunks (honouring Range); the first answer
    breaks off after ``cut_at`` bytes, and ``before_last_byte()`` runs before the last one."""
    state = {"cut": cut_at}

    def handler(request: httpx.Request) -> httpx.Response:
        start = int(request.headers.get("range", "bytes=0-")[6:-1])
        body, cut = data[start:], state["cut"]
        state["cut"] = None

        def chunks():
            for i in range(0, len(body) - 1, 4096):
                if cut is not None and start + i >= cut:
                    raise httpx.ReadError("connection cut by the test")
                yield body[i : min(i + 4096, len(body) - 1)]
            if before_last_byte is not None:
                before_last_byte()
            yield body[-1:]

        headers = {"etag": tag or etag(data), "content-length": str(len(body))}
        if start:
            headers["content-range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return httpx.Response(206 if start else 200, headers=headers, content=chunks())

    return handler


def client(handler, tmp_path: Path, **kwargs) -> Client:
    return Client(
        "http://test", transport=httpx.MockTransport(handler), cache_dir=tmp_path / "cache", backoff=0, **kwargs
    )


def files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())


def same(got: dict, expected: dict) -> bool:
    return list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_atlases_are_decoded_before_the_last_byte_arrives(tmp_path, monkeypatch):
    decoded, started = [], threading.Event()
    real = jpeg_stream.decode

    def counting(data):
        decoded.append(1)
        started.set()
        return real(data)

    monkeypatch.setattr(jpeg_stream, "decode", counting)

    def before_last_byte():
        assert started.wait(60), "no atlas decoded while the package was downloading"

    with client(serving(PACKAGE, before_last_byte=before_last_byte), tmp_path) as c:
        state = c.state_dict("m", quality=20)
    assert same(state, decode(PACKAGE)) and files(tmp_path) == ["q20.jpw", "q20.json"]


def test_a_cut_download_resumes_and_decodes_what_the_whole_file_holds(tmp_path):
    with client(serving(PACKAGE, cut_at=len(PACKAGE) // 2), tmp_path) as c:
        state = c.state_dict("m", quality=20)
    assert same(state, decode(PACKAGE))


def test_a_cut_download_that_gives_up_leaves_only_its_part_file(tmp_path):
    with client(serving(PACKAGE, cut_at=len(PACKAGE) // 2), tmp_path, retries=0) as c:
        with pytest.raises(TransportError, match="connection cut"):
            c.state_dict("m", quality=20)
    assert files(tmp_path) == ["q20.jpw.part", "q20.jpw.part.json"]  # resumable; nothing in the cache
    with client(serving(PACKAGE), tmp_path) as c:  # the next process resumes and decodes it whole
        assert same(c.state_dict("m", quality=20), decode(PACKAGE))


@pytest.mark.parametrize("where", [0.01, 0.5, 0.999])
def test_bytes_changed_in_transit_leave_nothing_behind(tmp_path, where):
    bad = bytearray(PACKAGE)
    bad[int(len(bad) * where)] ^= 0x40
    with client(serving(bytes(bad), tag=etag(PACKAGE)), tmp_path) as c, pytest.raises(IntegrityError):
        c.state_dict("m", quality=20)
    assert files(tmp_path) == []


def test_a_package_that_does_not_decode_is_never_cached(tmp_path):
    """The server's bytes match its ETag, but the package is corrupt inside (its own digest)."""
    stored_bad = bytearray(PACKAGE)
    stored_bad[-10] ^= 0x40
    for call in (lambda c: c.state_dict("m", quality=20), lambda c: c.download("m", quality=20, check=True)):
        with client(serving(bytes(stored_bad)), tmp_path) as c, pytest.raises(CodecError, match="digest mismatch"):
            call(c)
        assert files(tmp_path) == []


def test_a_package_that_breaks_a_rule_is_never_cached(tmp_path):
    """Digest recomputed, as an attacker would: the rule it breaks is what is reported."""

    def nan_scale(stored):
        stored["a.weight/scale"][0] = float("nan")

    bad = rewrite(PACKAGE, edit_stored=nan_scale)
    with client(serving(bad), tmp_path) as c, pytest.raises(CodecError, match="NaN"):
        c.state_dict("m", quality=20)
    assert files(tmp_path) == []


def test_the_async_client_decodes_as_it_downloads_too(tmp_path):
    sync_handler = serving(PACKAGE, cut_at=len(PACKAGE) // 3)

    async def handler(request):
        response = sync_handler(request)

        async def chunks():
            for chunk in response.stream:
                yield chunk

        return httpx.Response(response.status_code, headers=response.headers, content=chunks())

    async def run():
        async with AsyncClient(
            "http://test", transport=httpx.MockTransport(handler), cache_dir=tmp_path / "cache", backoff=0
        ) as c:
            return await c.state_dict("m", quality=20)

    assert same(asyncio.run(run()), decode(PACKAGE))

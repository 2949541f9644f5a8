"""``decode``: ``.jpw`` bytes to a dense state_dict, every atlas of every tensor one job.

>>> state = decode(data, device="cpu")          # dense tensors, original dtypes and shapes

On the CPU every JPEG atlas is one job for a thread pool, largest first, while this thread
rebuilds the other tensors; on CUDA each tensor's atlases are one nvJPEG batch.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from jpegweights import cpus

from . import codings
from .codings import jpeg as jpeg_coding
from .container import Verify, digest_wins, read_pending
from .errors import ManifestError, show
from .manifest import check_manifest


def decode(
    data: bytes | bytearray | memoryview,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    names: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Decode ``.jpw`` bytes into a dense state_dict on ``device`` (only the tensors in ``names``
    if given: a name the package lacks raises ``ManifestError``).

    All or nothing: every rule of the format is checked before any tensor is rebuilt, and every
    tensor is rebuilt, and the digest checked, before anything is returned; any problem raises a
    ``CodecError`` subclass naming the tensor. The digest is computed beside the parsing and
    decoding; when it does not match, that ``ChecksumError`` is what is raised, whatever else
    the corruption broke. The manifest's ``architecture`` plays no part.
    """
    return decode_verified(*read_pending(data), device, workers, names)


def decode_package(
    data: bytes | bytearray | memoryview, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``decode`` that also returns the (checked) manifest, ``(state_dict, manifest)``, parsing
    the file once."""
    stored, manifest, verify = read_pending(data)
    return decode_verified(stored, manifest, verify, device, None), manifest


def decode_verified(
    stored: Mapping[str, torch.Tensor],
    manifest: dict[str, Any],
    verify: Verify,
    device: str | torch.device,
    workers: int | None,
    names: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """``decode_stored`` while the digest is checked beside it: the tensors once it matches,
    and a digest mismatch rather than any error the corruption caused."""
    with digest_wins(verify):
        out = decode_stored(stored, manifest, device, workers, names)
    verify()
    return out


def decode_stored(
    stored: Mapping[str, torch.Tensor],
    manifest: dict[str, Any],
    device: str | torch.device,
    workers: int | None,
    names: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of a parsed package (checked here first), those in ``names`` if given."""
    check_manifest(manifest, stored)
    tensors = _selected(manifest["tensors"], names)
    workers = workers or min(8, cpus.available())
    if torch.device(device).type == "cuda" or workers == 1:
        return {name: codings.decode(name, entry, stored, device) for name, entry in tensors.items()}
    return _decode_pooled(tensors, stored, device, workers)


def _selected(tensors: dict[str, Any], names: Collection[str] | None) -> dict[str, Any]:
    if names is None:
        return tensors
    missing = sorted(set(names) - tensors.keys())
    if missing:
        raise ManifestError(f"the package has no tensor {show(missing[0])}")
    return {name: entry for name, entry in tensors.items() if name in names}


def _decode_pooled(
    tensors: dict[str, Any], stored: Mapping[str, torch.Tensor], device: str | torch.device, workers: int
) -> dict[str, torch.Tensor]:
    """On the CPU every atlas of every tensor is one job for the pool, largest first: a model's
    tensors are mostly one atlas each, so decoding them one tensor at a time left cores idle.
    Meanwhile this thread rebuilds the other tensors."""
    out, pending, jobs = {}, {}, []
    for name, entry in tensors.items():
        if entry["coding"] == "jpeg":
            pending[name], tensor_jobs = jpeg_coding.jobs(name, entry, stored, device)
            jobs += tensor_jobs
    jobs.sort(key=lambda job: -job[1]["height"] * job[1]["width"])
    rest = {name: entry for name, entry in tensors.items() if name not in pending}
    if len(jobs) <= 1:  # handing one job to another thread costs more than it saves
        for fill, a in jobs:
            fill(a)
        out.update((name, codings.decode(name, entry, stored, device)) for name, entry in rest.items())
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fill, a) for fill, a in jobs]
            try:
                out.update((name, codings.decode(name, entry, stored, device)) for name, entry in rest.items())
                for f in futures:
                    f.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # returns once no job is left running
                raise
    for name, dense in pending.items():
        out[name] = jpeg_coding.finish(name, tensors[name], stored, dense)
    return {name: out[name] for name in tensors}

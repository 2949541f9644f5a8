"""Models at run time, Triton-style: upload, delete, load, unload, rescan (admin token only).

    PUT    /models/{name}            body: a .jpw, or safetensors with an architecture; ?version=
    DELETE /models/{name}            unload it and remove its folder
    POST   /models/{name}/load       load (or reload) its folder
    POST   /models/{name}/unload     drop it from memory; the folder stays
    POST   /models/rescan            pick up the store folder's changes
    POST   /v2/repository/index      the store's models and their state (Open Inference Protocol)
    POST   /v2/repository/models/{name}/load | unload

An upload is streamed to a file in the store, its header (and a safetensors upload's
architecture) checked as soon as it has arrived, a package decoded as its bytes arrive, then
loaded completely (build, one forward pass) from a staging folder before it replaces anything.
Uploads are received one at a time, each within ``upload_timeout_s``. A replaced model keeps
answering the requests that already hold it; new requests get the new one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request

from jpegweights.codec import CodecError, StreamDecoder
from jpegweights.codec.container import MAX_HEADER_BYTES, is_package

from ..deps import Admin, RuntimeDep
from ..errors import InputError, ModelNotFound, StoreError, StoreUnwritable, UploadTimeout
from ..responses import describe
from ..store import Decoded, check_name, check_upload

router = APIRouter(tags=["model management"], dependencies=[Admin])


@router.put(
    "/models/{name}",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload(name: str, request: Request, runtime: RuntimeDep, version: str | None = None) -> dict:
    """Upload a package (validated before it replaces anything) and serve it."""
    path = None
    try:
        path = runtime.store.upload_path(name)
        async with runtime.upload_lock:
            try:
                async with asyncio.timeout(runtime.settings.upload_timeout_s):
                    decoded = await receive(request, path, runtime.store.options.device)
            except TimeoutError:
                raise UploadTimeout(
                    f"the upload did not arrive within upload_timeout_s={runtime.settings.upload_timeout_s:g} s"
                ) from None
            async with runtime.manage_lock:
                model = await asyncio.to_thread(runtime.store.publish, name, path, version, decoded)
                runtime.install(model)
    except (StoreError, CodecError, ValueError) as exc:  # everything that makes a package unservable
        raise InputError(f"package refused, nothing replaced: {exc}") from None
    except OSError as exc:
        raise StoreUnwritable(f"the model store cannot be written ({exc.strerror}); nothing replaced") from None
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    return describe(model)


async def receive(request: Request, path: Path, device: str) -> Decoded | None:
    """The request's body, streamed into ``path``. With a ``Content-Length``, its header is
    checked as soon as it has arrived (``store.check_upload``: a safetensors upload's
    architecture too), so a bad upload is refused before the rest of it is read; a ``.jpw``
    package is then decoded as it arrives, each atlas as soon as its bytes are in (what it
    returns, checked whole: ``(state_dict, manifest)``), so that it is ready as the last byte
    lands."""
    declared = request.headers.get("content-length", "")
    total = int(declared) if declared.isdigit() else None
    head: bytearray | None = bytearray()
    with open(path, "wb") as f, StreamDecoder(device, max_bytes=total) as decoder:
        streaming = False
        async for chunk in request.stream():
            f.write(chunk)
            if streaming:
                await asyncio.to_thread(decoder.feed, chunk)
            if head is None:
                continue
            head += chunk
            if total is not None and len(head) >= min(total, 8):
                n = int.from_bytes(head[:8], "little")
                if len(head) >= min(total, 8 if n > MAX_HEADER_BYTES else 8 + n):  # enough to say
                    header = await asyncio.to_thread(check_upload, bytes(head), total)
                    streaming = is_package(header)
                    if streaming:
                        await asyncio.to_thread(decoder.feed, bytes(head))
                    head = None
        return await asyncio.to_thread(decoder.finish) if streaming else None


@router.delete("/models/{name}")
async def delete(name: str, runtime: RuntimeDep) -> dict:
    async with runtime.manage_lock:
        if name in runtime.store.models:
            runtime.uninstall(name)
        await asyncio.to_thread(runtime.store.delete, name)
    return {"deleted": name}


@router.post("/models/rescan")
async def rescan(runtime: RuntimeDep) -> dict:
    async with runtime.manage_lock:
        await runtime.rescan()
    return {"models": sorted(runtime.store.models), "failed": runtime.store.failed}


@router.post("/models/{name}/load")
@router.post("/v2/repository/models/{name}/load")
async def load(name: str, runtime: RuntimeDep) -> dict:
    """Load (or reload) a model's folder; a folder that does not load leaves the served model as it is."""
    async with runtime.manage_lock:
        if not (runtime.store.model_dir / check_name(name, "model name")).is_dir():
            raise ModelNotFound(f"no model folder {name!r} in the store")
        try:
            model = await asyncio.to_thread(runtime.store.load_folder, name)
        except Exception as exc:  # a broken folder: said, and the model already served stays
            raise StoreError(f"model {name!r} does not load: {runtime.store.record_failure(name, exc)}") from None
        runtime.store.failed.pop(name, None)
        runtime.install(model)
    return describe(model)


@router.post("/models/{name}/unload")
@router.post("/v2/repository/models/{name}/unload")
async def unload(name: str, runtime: RuntimeDep) -> dict:
    """Stop serving a model; its folder stays, and a rescan does not bring it back."""
    async with runtime.manage_lock:
        runtime.uninstall(name)
        runtime.unloaded.add(name)
    return {"unloaded": name}


@router.post("/v2/repository/index")
async def repository_index(runtime: RuntimeDep) -> list[dict]:
    rows = [
        {"name": m.name, "version": m.version, "state": "READY", "reason": ""} for m in runtime.store.models.values()
    ]
    rows += [
        {"name": name, "state": "UNAVAILABLE", "reason": "unloaded"}
        for name in sorted(runtime.unloaded - set(runtime.store.models))
    ]
    rows += [
        {"name": name, "state": "UNAVAILABLE", "reason": reason}
        for name, reason in sorted(runtime.store.failed.items())
    ]
    return rows

"""Request bodies to the handlers' ``Request``: JSON, multipart forms and the v2 protocol
(JSON tensors or the binary tensor data extension), with errors that name the field.

What the inputs mean (pixels, text, shapes, value ranges) is the model's handler's business;
here only the protocols are taken apart.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

import numpy as np

from jpegweights.handlers import Request, RequestError, Signature

from .errors import BadRequest, InputError

MAX_INT_DIGITS = 30  # no sample value or shape needs more; numpy cannot hold more than 20


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRequest(f"an integer of {len(text)} digits in the body (at most {MAX_INT_DIGITS})")
    return int(text)


LONG_DIGITS = re.compile(rb"[0-9]{%d}" % (MAX_INT_DIGITS + 1))


def parse_json(body: bytes | memoryview) -> Any:
    """The request body as JSON, refusing what would otherwise crash later: integers too long
    for numpy (or for Python's own 4,300-digit limit) and nesting deeper than the parser's stack.
    Integers are checked one by one only when the body has a long run of digits at all (a
    Python call per integer was a tenth of the MNIST MLP's serving profile)."""
    body = bytes(body)
    try:
        return json.loads(body, parse_int=_bounded_int) if LONG_DIGITS.search(body) else json.loads(body)
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc


def b64decode(item: str, where: str) -> bytes:
    try:
        return base64.b64decode(item.split(",", 1)[-1] if item.startswith("data:") else item, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where} is not valid base64") from None


OPTIONS = ("top_k", "probabilities", "truncate")


def _options(values: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    given = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise InputError(
            f"this model takes no option(s) {unknown}" + (f"; it takes {sorted(allowed)}" if allowed else "")
        )
    return given


def predict_request(body: Any, allowed: frozenset[str]) -> Request:
    """A validated ``schemas.PredictRequest`` -> ``Request``."""
    images = None if body.images is None else [b64decode(s, f"images[{i}]") for i, s in enumerate(body.images)]
    options = _options({k: getattr(body, k) for k in OPTIONS}, allowed)
    return Request(inputs=body.inputs, images=images, text=body.text, pairs=body.pairs, options=options)


async def form_request(form: Any, allowed: frozenset[str]) -> tuple[Request, str | None]:
    """A multipart form -> (``Request``, the model it names). Files (any field name but the
    ones below) are images; ``text`` fields are texts; ``model``, ``top_k``, ``probabilities``
    and ``truncate`` are what their JSON namesakes are."""
    images, text, options, model = [], [], {}, None
    for key, value in form.multi_items():
        if hasattr(value, "read"):  # an uploaded file
            images.append(await value.read())
        elif key == "text":
            text.append(value)
        elif key == "model":
            model = value
        elif key == "top_k":
            if not value.isdigit() or len(value) > 6:
                raise InputError("top_k must be a positive integer")
            options[key] = int(value)
        elif key in ("probabilities", "truncate"):
            if value not in ("true", "false"):
                raise InputError(f"{key} must be true or false")
            options[key] = value == "true"
        else:
            raise InputError(f"unknown form field {key[:60]!r}: send files (images), text, model, {', '.join(OPTIONS)}")
    if bool(images) == bool(text):
        raise InputError("send image files or text fields (one kind per request)")
    return Request(images=images or None, text=text or None, options=_options(options, allowed)), model


# ---------------------------------------------------------------- Open Inference Protocol v2

NUMPY = {
    "FP32": "<f4",
    "FP64": "<f8",
    "FP16": "<f2",
    "UINT8": "u1",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "BOOL": "?",
}


def split_binary(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """(JSON part, binary part) of a v2 body; ``Inference-Header-Content-Length`` says where
    the JSON ends (the binary tensor data extension). Without it the whole body is JSON."""
    view = memoryview(body)
    if header_length is None:
        return view, view[:0]
    if not header_length.isdigit() or int(header_length) > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length[:40]!r} is not a length within the {len(body)}-byte body"
        )
    n = int(header_length)
    return view[:n], view[n:]


def _unpack_bytes(raw: memoryview, count: int, name: str) -> list[bytes]:
    """BYTES elements in the binary extension: each a 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise BadRequest(f"input {name!r}: truncated BYTES element")
        n = int.from_bytes(raw[at : at + 4], "little")
        if at + 4 + n > len(raw):
            raise BadRequest(f"input {name!r}: a BYTES element of {n} bytes runs past the data")
        out.append(bytes(raw[at + 4 : at + 4 + n]))
        at += 4 + n
    if len(out) != count:
        raise BadRequest(f"input {name!r} holds {len(out)} BYTES elements, its shape needs {count}")
    return out


def _tensor_values(t: Any, binary: memoryview, offset: int) -> tuple[Any, int]:
    """One input's elements, from JSON ``data`` or from the binary part: (values, new offset)."""
    count = math.prod(t.shape)
    size = (t.parameters or {}).get("binary_data_size")
    if size is None:
        if t.data is None:
            raise BadRequest(f"input {t.name!r} has no data (and no binary_data_size)")
        if t.datatype == "BYTES":
            flat = list(np.asarray(t.data, dtype=object).reshape(-1)) if t.data else []
            if len(flat) != count or not all(isinstance(v, str) for v in flat):
                raise BadRequest(f"input {t.name!r}: BYTES data must be {count} strings")
            return flat, offset
        try:
            x = np.asarray(t.data, dtype=np.float64 if t.datatype != "BOOL" else np.bool_).reshape(-1)
        except (ValueError, TypeError, OverflowError):
            raise BadRequest(f"input {t.name!r}: data must be numbers (flat or nested in row-major order)") from None
        if x.size != count:
            raise BadRequest(f"input {t.name!r} has {x.size} values, shape {t.shape} needs {count}")
        return x.reshape(t.shape), offset
    if t.data is not None:
        raise BadRequest(f"input {t.name!r} has both data and binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
        raise BadRequest(
            f"input {t.name!r}: binary_data_size {str(size)[:40]} runs past the {len(binary)} bytes of binary data"
        )
    raw = binary[offset : offset + size]
    if t.datatype == "BYTES":
        return _unpack_bytes(raw, count, t.name), offset + size
    dtype = np.dtype(NUMPY[t.datatype])
    if size != count * dtype.itemsize:
        raise BadRequest(
            f"input {t.name!r}: {size} bytes of binary data, "
            f"shape {t.shape} of {t.datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(t.shape), offset + size


def v2_request(body: Any, binary: memoryview, signature: Signature) -> Request:
    """A validated ``schemas.V2InferRequest`` (and the body's binary part) -> ``Request``."""
    fields: dict[str, Any] = {}
    offset = 0
    for t in body.inputs:
        try:
            spec = signature.input(t.name)
        except RequestError as exc:  # the protocol answers every bad input with 400
            raise BadRequest(str(exc)) from None
        if (spec.datatype == "BYTES") != (t.datatype == "BYTES"):
            raise BadRequest(f"input {t.name!r} is {spec.datatype}, not {t.datatype}")
        values, offset = _tensor_values(t, binary, offset)
        if spec.source in fields:
            raise BadRequest(f"input {t.name!r} is given twice")
        if spec.datatype != "BYTES":
            fields[spec.source] = values
        elif spec.source == "text":
            try:
                fields["text"] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
            except UnicodeDecodeError:
                raise BadRequest(f"input {t.name!r}: text must be UTF-8") from None
        else:  # encoded files: raw bytes in binary, base64 strings in JSON
            fields[spec.source] = [
                v if isinstance(v, bytes) else b64decode(v, f"input {t.name!r} element {i}")
                for i, v in enumerate(values)
            ]
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    if len(fields) != 1:
        raise BadRequest(f"send one of the inputs {[s.name for s in signature.inputs]}")
    return Request(**fields)


def v2_outputs(arrays: dict[str, np.ndarray], body: Any) -> tuple[dict[str, Any], list[bytes]]:
    """The response's ``outputs`` and, for those asked in binary, their bytes (in order)."""
    default_binary = bool((body.parameters or {}).get("binary_data_output", False))
    wanted = (
        [(o.name, bool((o.parameters or {}).get("binary_data", default_binary))) for o in body.outputs]
        if body.outputs
        else [(k, default_binary) for k in arrays]
    )
    unknown = sorted({name for name, _ in wanted} - set(arrays))
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; this model has {list(arrays)}")
    outputs, blobs = [], []
    for name, binary in wanted:
        a = arrays[name]
        datatype = (
            "BYTES"
            if a.dtype == object
            else next(k for k, v in NUMPY.items() if np.dtype(v) == a.dtype.newbyteorder("<") or np.dtype(v) == a.dtype)
        )
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(a.shape)}
        if binary:
            blob = (
                b"".join(len(v).to_bytes(4, "little") + v for v in a.reshape(-1))
                if datatype == "BYTES"
                else np.ascontiguousarray(a, dtype=NUMPY[datatype]).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = (
                [v.decode("utf-8", "replace") for v in a.reshape(-1)] if datatype == "BYTES" else a.reshape(-1).tolist()
            )
        outputs.append(entry)
    return {"outputs": outputs}, blobs

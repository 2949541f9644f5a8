"""What the JSON answers hold: a model's description, and JSON that never carries NaN or
Infinity (they have no JSON spelling)."""

from __future__ import annotations

import json

from fastapi import Response

from jpegweights.handlers.architectures import title

from .errors import NonFiniteOutput
from .store import Model


def json_bytes(payload: dict) -> bytes:
    """``payload`` as compact JSON; ``NonFiniteOutput`` if it holds NaN or Infinity.

    >>> json_bytes({"scores": [0.5]})
    b'{"scores":[0.5]}'
    """
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # bare NaN would break every client's parser
        raise NonFiniteOutput("the model produced NaN or Infinity for this input") from None


def json_response(payload: dict, status: int = 200) -> Response:
    """``payload`` as a JSON ``Response`` (``json_bytes``)."""
    return Response(json_bytes(payload), status_code=status, media_type="application/json")


def describe(model: Model) -> dict:
    """A model as ``GET /models/{name}`` and management answers show it."""
    return {
        "name": model.name,
        "version": model.version,
        "quality": model.quality,
        "device": model.device,
        "handler": model.handler.name,
        "architecture": title(model.manifest["architecture"]),
        **model.handler.describe(),
        "inputs": [s.to_json() for s in model.handler.signature.inputs],
        "outputs": [s.to_json() for s in model.handler.signature.outputs],
        "options": sorted(model.handler.options),
        "parameters": model.uncompressed_bytes // 4,
        "uncompressed_bytes": model.uncompressed_bytes,
        "package_bytes": model.package.stat().st_size,
        "other_qualities": model.source_problem() is None,  # a float source this server can read
        "decode_ms": round(model.decode_seconds * 1e3, 3),
        "max_batch_size": model.max_batch_size,
        "resident_weight_bytes": model.resident_bytes,
        "runtime": {"name": model.runtime.runtime, "version": model.runtime.version, "fallback": model.runtime.reason},
        "compressed_domain": model.compressed_domain,
        "bytes_served": {str(q): n for q, n in sorted(model.bytes_served.items())},
        "accuracy": _accuracy(model.report),
        "fidelity": model.report,
    }


def _accuracy(report: dict) -> dict[str, float]:
    """Accuracy per quality, where the model's report measures accuracy (else {})."""
    if report.get("metric") != "accuracy":
        return {}
    return {str(q): r["value"] for q, r in report.get("qualities", {}).items()}

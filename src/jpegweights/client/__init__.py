"""jpegweights client: download compact weights, verify them, rebuild the model, run it.

>>> from jpegweights.client import Client
>>> with Client("http://127.0.0.1:8000") as c:
...     model = c.load("mnist-mlp", quality=20)

Builds on ``codec`` and ``handlers``; never imports the server.
"""

from ._client import AsyncClient, Client
from .cache import default_cache_dir
from .errors import (
    CodecError,
    HTTPStatusError,
    IntegrityError,
    JpegWeightsError,
    ModelError,
    ProtocolError,
    TransportError,
)
from .model import PackagedModel

__all__ = [
    "AsyncClient", "Client", "CodecError", "HTTPStatusError", "IntegrityError", "JpegWeightsError",
    "ModelError", "PackagedModel", "ProtocolError", "TransportError", "default_cache_dir",
]  # fmt: skip

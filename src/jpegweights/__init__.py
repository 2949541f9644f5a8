"""jpegweights: neural-network weights stored and shipped as JPEG-coded tiles.

>>> from jpegweights import compress
>>> compress("model.safetensors", data="photos/", target=0.01, metric="kl").save("model.jpw")

Subpackages (under src/jpegweights/):

- ``jpegweights.codec``: state_dict <-> ``.jpw`` packages (no HTTP, no model knowledge);
- ``jpegweights.compressed``: weights kept as JPEG coefficients in memory, and their layers;
- ``jpegweights.handlers``: architectures and their pre- and post-processing;
- ``jpegweights.pipeline``: the compression pipeline, ``compress`` (also here, imported when first used);
- ``jpegweights.client``: download, verify, rebuild and run (``pip install jpegweights``);
- ``jpegweights.service``: the FastAPI model server (``pip install 'jpegweights[serve]'``);
- ``jpegweights.cli``: the ``jpegweights`` command;
- ``jpegweights.training``: fine-tuning through the codec, and the MNIST seed experiment;
- ``jpegweights.files``: the one atomic writer and the cache folder, which every package uses.
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {"compress": "jpegweights.pipeline", "Compressed": "jpegweights.pipeline"}


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import jpegweights.client` does not load the pipeline.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jpegweights' has no attribute {name!r}")

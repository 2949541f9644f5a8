"""The compression pipeline: float models in, packages out, in one call.

>>> from jpegweights.pipeline import compress
>>> compress("model.safetensors", data="photos/", target=0.01, metric="kl").save("model.jpw")

- ``compression``: ``compress`` and its result, ``Compressed``: calibration, the calibrated
  search (``codec.allocate``), error compensation and the curve cache, in that order;
- ``calibrate``: ``Calibration`` (how far coded weights move a model's outputs on given inputs,
  and the second moments error compensation fits) and ``read_inputs``;
- ``cache``: the measured curves on disk; ``report``: ``fidelity``, the report per quality;
- ``models``: model files (``load_state_dict``, ``load_model``, ``save_model``).

Sits on ``codec`` and ``handlers``; ``training`` and the CLI build on it.
"""

from .calibrate import Calibration, read_inputs
from .compression import Compressed, compress
from .models import load_model, load_state_dict, save_model
from .report import fidelity

__all__ = [
    "Calibration",
    "Compressed",
    "compress",
    "fidelity",
    "load_model",
    "load_state_dict",
    "read_inputs",
    "save_model",
]

"""The compression pipeline: float models in, packages out.

Model files (``load_state_dict``, ``load_model``, ``save_model``) live here; the calibrated
search, error compensation and their cache are built on them.
"""

from .models import load_model, load_state_dict, save_model

__all__ = ["load_model", "load_state_dict", "save_model"]

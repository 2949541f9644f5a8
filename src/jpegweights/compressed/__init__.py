"""Compressed weights: JPEG-coded matrices kept as their DCT coefficients, and the layers that
compute with them (``W x`` without rebuilding ``W``). Above ``codec``, below ``handlers``.

>>> matrices, kept_dense = load_matrices(package_bytes)
>>> y = matrices["1.weight"].matmul(x)
>>> report = swap_layers(model, package_bytes, state)    # Linear and 1x1 Conv2d swapped in place
"""

from jpegweights.codec.errors import DenseOnlyError

from .modules import (
    MAX_DENSITY,
    POLICIES,
    CompressedConv1x1,
    CompressedLinear,
    decompress,
    resident_bytes,
    swap_layers,
)
from .weights import CoefficientMatrix, Sparse, coefficient_matrix, load_matrices

__all__ = [
    "MAX_DENSITY", "POLICIES", "CoefficientMatrix", "CompressedConv1x1", "CompressedLinear", "DenseOnlyError", "Sparse",
    "coefficient_matrix", "decompress", "load_matrices", "resident_bytes", "swap_layers",
]  # fmt: skip

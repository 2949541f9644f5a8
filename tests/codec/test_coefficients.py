"""The compressed domain's arithmetic: products from JPEG coefficients against the matrix the
same coefficients code (float IDCT) and against libjpeg's own decode, and hostile streams."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from jpegweights.codec import EncodeConfig, JpegDecodeError, decode, encode, load_manifest
from jpegweights.codec.coefficients import read_coefficients
from jpegweights.compressed import DenseOnlyError, load_matrices
from tests.codec.helpers import rewrite

# The seed preset: the streams these cases were built around (its tables, one range per tensor).
JPEG_ONLY = dict(coding="jpeg", lossless_below=0, int8_below=0)


def smooth(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, max(2, rows // 16), max(2, cols // 16), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(rows, cols), mode="bilinear", align_corners=False)[
        0, 0
    ] + 0.01 * torch.randn(rows, cols, generator=g)


CASES = {
    # name: (matrix, settings); shapes not multiples of 8, several bands and column chunks,
    # tiles that line up with the 8x8 blocks and tiles that do not
    "matrix 100x77": (
        torch.randn(100, 77, generator=torch.Generator().manual_seed(1)),
        EncodeConfig.preset("seed", quality=30, layout="matrix", **JPEG_ONLY),
    ),
    "bands 300x50": (
        smooth(300, 50),
        EncodeConfig.preset("seed", quality=60, layout="matrix", max_atlas_pixels=4096, **JPEG_ONLY),
    ),
    "flat table 64x200": (
        smooth(64, 200),
        EncodeConfig.preset("seed", quality=90, qtable="flat", layout="matrix", **JPEG_ONLY),
    ),
    "tiles 28x28": (
        torch.randn(50, 784, generator=torch.Generator().manual_seed(2)),
        EncodeConfig.preset("seed", quality=20, layout="rows:28x28", **JPEG_ONLY),
    ),
    "tiles 16x16": (smooth(40, 256), EncodeConfig.preset("seed", quality=80, layout="rows:16x16", **JPEG_ONLY)),
    "tiles 9x9, several atlases": (
        torch.randn(120, 81, generator=torch.Generator().manual_seed(3)),
        EncodeConfig.preset("seed", quality=50, layout="rows:9x9", max_atlas_pixels=4096, **JPEG_ONLY),
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [1, 5])
def test_product_equals_the_matrix_the_coefficients_code(case, batch):
    w, config = CASES[case]
    data = encode({"w": w}, config)
    matrix = load_matrices(data)[0]["w"]
    x = torch.randn(batch, w.shape[1], generator=torch.Generator().manual_seed(batch))
    dense = matrix.dense()
    y, reference = matrix.matmul(x), x.double() @ dense.double().T
    assert dense.shape == w.shape
    assert float((y.double() - reference).abs().max() / reference.abs().max()) < 1e-5
    # leading dimensions are kept, as nn.Linear keeps them
    assert torch.allclose(
        matrix.matmul(x.view(batch, 1, -1)).view(batch, -1), y, rtol=1e-5, atol=1e-5 * float(y.abs().max())
    )


@pytest.mark.parametrize("case", ["bands 300x50", "tiles 16x16"])
def test_the_coded_matrix_is_libjpegs_decode_where_nothing_clips(case):
    """libjpeg's integer IDCT rounds each pixel (off by under 1 step of the row's scale); where a
    pixel does not clip, that is the only difference."""
    w, config = CASES[case]
    data = encode({"w": w}, config)
    matrix = load_matrices(data)[0]["w"]
    exact = (matrix.dense() - matrix.offset[:, None]) / matrix.scale[:, None]  # pixels before rounding and clamping
    steps = (exact - (decode(data)["w"] - matrix.offset[:, None]) / matrix.scale[:, None]).abs()
    inside = (exact > 0.5) & (exact < 254.5)
    assert inside.float().mean() > 0.99 and matrix.clipped < 0.001 * exact.numel()
    assert float(steps[inside].max()) < 1.0
    assert float(steps.mean()) < 0.35


def test_clipping_is_counted():
    w, config = CASES["tiles 28x28"]  # noise at quality 20 overshoots 0..255
    matrix = load_matrices(encode({"w": w}, config))[0]["w"]
    assert matrix.clipped > 0 and matrix.max_pixel_difference > 1.0


@pytest.mark.parametrize("case", ["tiles 28x28", "matrix, a range per row"])
def test_clamp_free_streams_decode_to_the_same_weights_up_to_rounding(case):
    w, config = CASES.get(case) or (
        CASES["matrix 100x77"][0],
        EncodeConfig.preset("seed", quality=20, layout="matrix", ranges="row", **JPEG_ONLY),
    )
    plain = load_matrices(encode({"w": w}, config))[0]["w"]
    data = encode({"w": w}, replace(config, clamp_free=True))
    matrix = load_matrices(data)[0]["w"]
    assert plain.clipped > 0 and matrix.clipped == 0
    assert matrix.max_pixel_difference < 1.0
    steps = (matrix.dense() - decode(data)["w"]).abs() / matrix.scale[:, None]
    assert float(steps.max()) < 1.0
    assert (
        load_manifest(data)["config"]["clamp_free"] is True
        and "clamp_free" not in load_manifest(encode({"w": w}, config))["config"]
    )


def test_only_jpeg_tensors_and_the_names_asked_for():
    data = encode(
        {"a": smooth(64, 64), "b": smooth(64, 64, seed=1), "bias": torch.zeros(64)},
        EncodeConfig.preset("seed", quality=50, **JPEG_ONLY),
    )
    assert set(load_matrices(data)[0]) == {"a", "b"}
    assert set(load_matrices(data, names={"b", "bias"})[0]) == {"b"}


def test_memory_is_four_bytes_per_kept_coefficient():
    matrix = load_matrices(
        encode({"w": smooth(256, 256)}, EncodeConfig.preset("seed", quality=50, layout="matrix", **JPEG_ONLY))
    )[0]["w"]
    nnz = matrix.coefficients.val.numel()
    assert matrix.coefficients.val.dtype == torch.int16 and matrix.coefficients.col.dtype == torch.int16
    assert matrix.nbytes == 2 * nnz + 2 * nnz + 4 * 257 + 2 * 4 * 256  # values, columns, row pointers, scale and offset
    assert matrix.density < 0.1 and matrix.nbytes < 256 * 256 * 4 / 8


def test_corrupt_entropy_coded_data_raises_before_any_coefficient_is_read():
    data = encode({"w": smooth(64, 128)}, EncodeConfig.preset("seed", quality=90, layout="matrix", **JPEG_ONLY))

    def corrupt(stored):
        stream = stored["w/jpeg/0"]
        sos = bytes(stream.numpy()).index(b"\xff\xda")
        middle = (sos + len(stream)) // 2
        stream[middle : middle + 64] = torch.from_numpy(np.random.default_rng(0).integers(0, 255, 64, dtype=np.uint8))

    with pytest.raises(JpegDecodeError, match="atlas 'w/jpeg/0'") as info:
        load_matrices(rewrite(data, edit_stored=corrupt))
    assert info.value.tensor == "w"


def test_truncated_stream_raises():
    data = encode({"w": smooth(64, 64)}, EncodeConfig.preset("seed", quality=90, layout="matrix", **JPEG_ONLY))
    stream = torch.from_numpy(np.frombuffer(bytes(load_raw(data)["w/jpeg/0"].numpy())[:300], dtype=np.uint8).copy())
    with pytest.raises(JpegDecodeError):
        read_coefficients(stream, 64, 64)


def load_raw(data: bytes) -> dict[str, torch.Tensor]:
    from jpegweights.codec.container import read

    return read(data)[0]


def test_a_progressive_stream_is_not_read():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8), "L").save(
        buf, format="JPEG", progressive=True
    )
    with pytest.raises(DenseOnlyError, match="not baseline"):
        read_coefficients(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), 16, 16)


def test_header_dimensions_must_match():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 24), dtype=np.uint8), "L").save(buf, format="JPEG")
    with pytest.raises(JpegDecodeError, match="16x24"):
        read_coefficients(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), 16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    w, config = CASES["tiles 28x28"]
    matrix = load_matrices(encode({"w": w}, config))[0]["w"]
    x = torch.randn(3, w.shape[1])
    assert torch.allclose(matrix.to("cuda").matmul(x.cuda()).cpu(), matrix.matmul(x), rtol=1e-4, atol=1e-4)

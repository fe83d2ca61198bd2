"""The roofline's batch-tile ceiling runs the batch kernels' own block step: check its sums and its errors."""
import numpy as np
import pytest


@pytest.mark.parametrize("nb", [1, 3, 18])
def test_tile_loop_sums_the_blocks_like_numpy(nb):
    from tinyinfer.bench.roofline import _tile_loop
    from tinyinfer.quant import simd

    rng = np.random.default_rng(nb)
    buf = rng.integers(0, 16, (simd.TILE_W, nb, 32)).astype(np.int8)
    xq = rng.integers(-127, 128, (simd.TILE_X, nb, 32)).astype(np.int8)
    scales = rng.random((simd.TILE_W, simd.TILE_X, nb)).astype(np.float32)
    total = _tile_loop(simd.TAGS["q4_1"], buf, xq, scales, simd.ZERO_TILES[simd.TILE_X], 1)
    dots = (buf[0].astype(np.int64) * xq[0].astype(np.int64)).sum(axis=1)  # (nb,) exact integers
    assert total == pytest.approx(float((dots * scales[0, 0].astype(np.float64)).sum()), rel=1e-5)


def test_tile_rate_measures_and_checks_its_format():
    from tinyinfer.bench.roofline import tile_rate

    assert tile_rate(nb=2, reps=8, all_threads=False) > 0
    with pytest.raises(ValueError, match="fmt must be one of"):
        tile_rate("q8_0")

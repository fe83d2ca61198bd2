"""The golden fixture that ports check themselves against still matches the code."""
from pathlib import Path

import numpy as np
import pytest

import tinyinfer
from conftest import ROOT
from tinyinfer.golden import FORMAT_VERSION, compute_golden, weights_sha256
from tinyinfer.ops import cross_entropy_forward
from tinyinfer.safetensors import read_safetensors

TINY = Path(ROOT) / "models" / "tiny"
GOLDEN = Path(ROOT) / "tests" / "golden" / f"tiny_v{FORMAT_VERSION}.safetensors"


@pytest.fixture(scope="module")
def golden():
    return read_safetensors(GOLDEN)


def test_fixture_belongs_to_the_shipped_tiny_model(golden):
    _, meta = golden
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["model_sha256"] == weights_sha256(TINY), "models/tiny changed: run python -m tinyinfer.golden"


def test_code_matches_every_array_of_the_fixture(golden):
    expected, _ = golden
    actual = compute_golden(tinyinfer.load(TINY))
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        # float32 sums may round differently with another BLAS; a port should hold the same bar
        np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_fixture_is_self_consistent(golden):
    """What a port can check from the file alone: the loss is the cross-entropy of the logits."""
    g, _ = golden
    loss, _ = cross_entropy_forward(g["logits"].astype(np.float64), g["targets"].astype(np.int64))
    assert loss == pytest.approx(float(g["loss"]), rel=1e-5)
    probs = g["act/layers.0.attn_probs"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(probs[0, 0], k=1) == 0)  # causal

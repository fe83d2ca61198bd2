"""SparseGPT: exact masks, the weight update, and a smaller output error than magnitude and Wanda."""
import numpy as np
import pytest
from conftest import small_model
from hypothesis import given
from hypothesis import strategies as st

from tinyinfer.hessian import calibrate_layers, hessian, layer_objective
from tinyinfer.sparse import prune
from tinyinfer.sparse.sparsegpt import reconstruction_error, sparsegpt_prune_matrix, sparsegpt_prune_model


def layer_case(seed=0, N=48, K=64, M=2000):
    """A weight and correlated inputs whose features differ in scale, as a transformer's do."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((K, K)) * 0.3 + np.eye(K)  # (K, K) correlated features
    scale = np.exp(rng.standard_normal(K))  # (K,) some features far larger than others
    x = (rng.standard_normal((M, K)) @ mixing) * scale  # (M, K)
    w = rng.standard_normal((N, K)).astype(np.float32)  # (N, K)
    return w, x


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_output_error_beats_magnitude_and_wanda_at_the_same_sparsity(seed, sparsity):
    w, x = layer_case(seed)
    pruned, mask = sparsegpt_prune_matrix(w, hessian(x), sparsity, block_size=32)
    magnitude = w * prune.magnitude_masks({"w": w}, sparsity)["w"]
    wanda = w * prune.wanda_masks({"w": w}, {"w": np.linalg.norm(x, axis=0)}, sparsity)["w"]
    errors = {name: reconstruction_error(w, wp, x) for name, wp in
              (("sparsegpt", pruned), ("magnitude", magnitude), ("wanda", wanda))}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
    assert int((mask == 0).sum()) == round(sparsity * w.size)  # the same sparsity, exactly


@pytest.mark.parametrize("seed", [0, 1])
def test_two_four_beats_magnitude_and_wanda_two_four(seed):
    w, x = layer_case(seed)
    pruned, _ = sparsegpt_prune_matrix(w, hessian(x), n=2, m=4, block_size=32)
    norms = {"w": np.linalg.norm(x, axis=0)}
    magnitude = w * prune.nm_masks({"w": w}, 2, 4)["w"]
    wanda = w * prune.nm_masks({"w": w}, 2, 4, input_norms=norms)["w"]
    assert reconstruction_error(w, pruned, x) < min(reconstruction_error(w, magnitude, x),
                                                   reconstruction_error(w, wanda, x))


@given(N=st.integers(1, 9), groups=st.integers(1, 9), block_groups=st.integers(1, 4),
       nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 2)]), seed=st.integers(0, 10_000))
def test_nm_pattern_is_exact_and_pruned_weights_are_exactly_zero(N, groups, block_groups, nm, seed):
    n, m = nm
    K = groups * m
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((3 * K + 1, K))
    pruned, mask = sparsegpt_prune_matrix(w, hessian(x), n=n, m=m, block_size=block_groups * m)
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask.reshape(N, groups, m).sum(axis=-1), n)  # n kept of every m
    assert np.all(pruned[mask == 0] == 0)


@given(N=st.integers(1, 9), K=st.integers(1, 40), block=st.integers(1, 50), sparsity=st.floats(0.0, 1.0),
       seed=st.integers(0, 10_000))
def test_unstructured_sparsity_is_exact_for_any_shape_and_block(N, K, block, sparsity, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((2 * K + 1, K))
    pruned, mask = sparsegpt_prune_matrix(w, hessian(x), sparsity, block_size=block)
    assert int((mask == 0).sum()) == round(sparsity * N * K)  # torch's exact-k count, over the matrix
    assert np.all(pruned[mask == 0] == 0) and np.isfinite(pruned).all()


def test_with_an_identity_hessian_it_is_magnitude_pruning():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((12, 32)).astype(np.float32)
    pruned, mask = sparsegpt_prune_matrix(w, np.eye(32), 0.5, block_size=32)  # one block: the whole matrix
    np.testing.assert_array_equal(mask, prune.magnitude_masks({"w": w}, 0.5)["w"])
    np.testing.assert_array_equal(pruned, w * mask)  # nothing to compensate: inputs are uncorrelated
    _, mask24 = sparsegpt_prune_matrix(w, np.eye(32), n=2, m=4)
    np.testing.assert_array_equal(mask24, prune.nm_masks({"w": w}, 2, 4)["w"])


def test_the_update_lowers_the_layer_objective_of_its_own_mask():
    """Keeping SparseGPT's mask but not its weight update must be worse: the update does the work."""
    w, x = layer_case(5)
    H = hessian(x)
    pruned, mask = sparsegpt_prune_matrix(w, H, 0.5)
    assert layer_objective(w, pruned, H) < 0.8 * layer_objective(w, w * mask, H)


def test_bad_arguments_are_named():
    w = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="H must be"):
        sparsegpt_prune_matrix(w, np.eye(7))
    with pytest.raises(ValueError, match="multiple of m"):
        sparsegpt_prune_matrix(np.ones((4, 6), np.float32), np.eye(6), n=2, m=4)
    with pytest.raises(ValueError, match="block_size"):
        sparsegpt_prune_matrix(w, np.eye(8), n=2, m=4, block_size=6)
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt_prune_matrix(w, np.eye(8), 1.5)
    with pytest.raises(ValueError, match="NaN"):
        sparsegpt_prune_matrix(w * np.nan, np.eye(8))


@pytest.mark.parametrize("within_block", ["group", "block"])
def test_model_pruning_prunes_every_block_linear_and_nothing_else(family, within_block):
    model = small_model(family)
    calib = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(4, 12))
    report = {}
    pruned, masks = sparsegpt_prune_model(model, calib, 0.5, within_block=within_block, progress=False,
                                          report=report)
    weights = prune.linear_weights(pruned)
    assert set(masks) == set(weights) == set(report)
    for name, w in weights.items():
        assert np.all(w[masks[name] == 0] == 0) and (masks[name] == 0).sum() == round(0.5 * w.size)
        assert 0 < report[name]["objective"] < report[name]["objective_dense"]
    for name, value in model.params.items():  # embedding, norms, biases untouched
        if name not in masks:
            np.testing.assert_array_equal(pruned.params[name], value)
    assert np.isfinite(pruned.logits(calib)).all()


def test_calibrate_layers_sees_the_earlier_layers_changes(family):
    """Sequential calibration: a layer's H comes from the model whose earlier layers are changed."""
    model = small_model(family)
    calib = np.random.default_rng(1).integers(0, model.config.vocab_size, size=(3, 10))
    seen_zero, seen_same = {}, {}
    calibrate_layers(model, calib, lambda name, w, H: np.zeros_like(w), progress=False, hessians=seen_zero)
    calibrate_layers(model, calib, lambda name, w, H: w, progress=False, hessians=seen_same)
    first = prune.linear_weight_names(model.config)[0][: -len(".weight")]
    last = prune.linear_weight_names(model.config)[-1][: -len(".weight")]
    np.testing.assert_allclose(seen_zero[first], seen_same[first])  # nothing changed before the first
    assert not np.allclose(seen_zero[last], seen_same[last])  # the last saw zeroed layers before it
    with pytest.raises(ValueError, match="within_block"):
        calibrate_layers(model, calib, lambda name, w, H: w, within_block="row", progress=False)


# --------------------------------------------------------------------------------------------
# the command line, on the shipped tiny model


def _cli(*args, check=True):
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "tinyinfer", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tinyinfer {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("method, pattern", [("sparsegpt", "50%"), ("sparsegpt-2:4", "2:4")])
def test_prune_command_runs_sparsegpt(tmp_path, method, pattern):
    import tinyinfer

    out = tmp_path / "pruned"
    _cli("prune", "--model", "tiny", "--method", method, "--amount", "0.5", "--out", str(out),
         "--calib-windows", "2", "--calib-seq-len", "64", "--min-sparsity", "1.0")  # keep every layer dense
    model = tinyinfer.load(out)
    for w in prune.linear_weights(model).values():
        if pattern == "2:4":
            assert np.all((w.reshape(w.shape[0], -1, 4) != 0).sum(axis=-1) <= 2)
        else:
            assert (w == 0).sum() >= round(0.5 * w.size)
    proc = _cli("prune", "--model", "tiny", "--method", "sparsegpt", "--amount", "1.5", "--out", str(tmp_path / "x"),
                check=False)
    assert proc.returncode != 0 and "--amount" in proc.stderr

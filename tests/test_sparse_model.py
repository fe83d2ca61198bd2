"""Sparse models on disk (CSR weights through save / load) and `tinyinfer prune` end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, small_model

import tinyinfer
from tinyinfer.checkpoint import CheckpointError
from tinyinfer.safetensors import read_safetensors, write_safetensors
from tinyinfer.sparse import CSRMatrix, prune, sparsify_model
from tinyinfer.sparse.model import SPARSE_METADATA_KEY, prune_model, weight_stats

IDS = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 0, 36, 4, 4]])


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "tinyinfer", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tinyinfer {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def sparse_model(family, amount=0.85):
    model = small_model(family)
    masks = prune.to_param_layout(prune.magnitude_masks(prune.linear_weights(model), amount), model.config)
    return sparsify_model(model, masks, min_sparsity=0.8)


# --------------------------------------------------------------------------------------------
# save / load


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_csr_weights_survive_save_and_load(tmp_path, family, dtype):
    model = sparse_model(family)
    names = prune.linear_weight_names(model.config)
    first = model.params[names[0]]
    model.params[names[0]] = CSRMatrix.from_dense(np.zeros(first.shape, np.float32))  # nnz = 0 stores too
    tinyinfer.save(model, tmp_path, dtype=dtype)
    tensors, metadata = read_safetensors(tmp_path / "model.safetensors")
    described = json.loads(metadata[SPARSE_METADATA_KEY])
    assert set(described) == set(names)
    assert names[0] not in tensors and tensors[names[0] + ".indptr"].dtype == np.int32
    assert tensors[names[1] + ".indices"].dtype == np.uint16  # compact columns: K <= 65,536
    assert tensors[names[1] + ".data"].dtype == np.float32  # CSR values stay float32 whatever the dtype
    loaded = tinyinfer.load(tmp_path)
    for name in names:
        w, v = loaded.params[name], model.params[name]
        assert isinstance(w, CSRMatrix) and w.shape == v.shape
        for part in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(w, part), getattr(v, part))
    if dtype == "float32":
        np.testing.assert_array_equal(loaded.logits(IDS), model.logits(IDS))


def test_a_model_with_dense_and_csr_layers_round_trips(tmp_path):
    model = sparse_model("llama", amount=0.5)  # 50 % < min_sparsity: every layer stays dense ...
    name = prune.linear_weight_names(model.config)[3]
    model.params[name] = CSRMatrix.from_dense(model.params[name] * (np.abs(model.params[name]) > 0.3))  # ... but one
    tinyinfer.save(model, tmp_path)
    loaded = tinyinfer.load(tmp_path)
    assert [n for n, v in loaded.params.items() if isinstance(v, CSRMatrix)] == [name]
    np.testing.assert_array_equal(loaded.logits(IDS), model.logits(IDS))


def test_files_with_int32_columns_still_load(tmp_path):
    # Files written before compact columns hold SciPy's int32 indices: they load as they are, and
    # multiply exactly as the same model with uint16 columns does.
    model = sparse_model("llama")
    wide = dict(model.params)
    for name, w in wide.items():
        if isinstance(w, CSRMatrix):
            wide[name] = w.with_index_dtype(np.int32)
    tinyinfer.save(type(model)(model.config, wide, model.tokenizer), tmp_path)
    tensors, _ = read_safetensors(tmp_path / "model.safetensors")
    assert {t.dtype for n, t in tensors.items() if n.endswith(".indices")} == {np.dtype(np.int32)}
    loaded = tinyinfer.load(tmp_path)
    csr = [w for w in loaded.params.values() if isinstance(w, CSRMatrix)]
    assert csr and all(w.indices.dtype == np.int32 for w in csr)
    np.testing.assert_array_equal(loaded.logits(IDS), model.logits(IDS))


def test_a_damaged_sparse_file_says_what_is_wrong(tmp_path):
    tinyinfer.save(sparse_model("llama"), tmp_path)
    path = tmp_path / "model.safetensors"
    tensors, metadata = read_safetensors(path)
    name = prune.linear_weight_names(small_model("llama").config)[0]
    del tensors[name + ".indices"]
    write_safetensors(path, tensors, metadata)
    with pytest.raises(CheckpointError, match=r"lacks \['model.layers.0.self_attn.q_proj.weight.indices'\]"):
        tinyinfer.load(tmp_path)


def test_structured_pruned_llama_round_trips(tmp_path):
    smaller = prune.prune_heads(prune.prune_mlp_neurons(small_model("llama"), 0.25), 0.5)
    tinyinfer.save(smaller, tmp_path)
    loaded = tinyinfer.load(tmp_path)
    assert loaded.config == smaller.config and loaded.config.n_head * loaded.config.head_dim < loaded.config.n_embd
    np.testing.assert_array_equal(loaded.logits(IDS), smaller.logits(IDS))


def test_weight_stats_count_what_is_stored():
    model = small_model("gpt2")
    dense = weight_stats(model)
    assert dense["params"] == model.config.num_params() == dense["nonzeros"]
    sparse = weight_stats(sparse_model("gpt2"))
    assert sparse["params"] == dense["params"]
    assert sparse["nonzeros"] < 0.5 * dense["nonzeros"] and sparse["bytes"] < dense["bytes"]


def test_prune_model_methods():
    model = small_model("llama")
    for method in ("magnitude", "global", "2:4"):
        pruned = prune_model(model, method, 0.5)
        zeros = sum(int((w == 0).sum()) for w in prune.linear_weights(pruned).values())
        assert zeros == sum(w.size for w in prune.linear_weights(model).values()) // 2
    with pytest.raises(ValueError, match="wanda needs calib_ids"):
        prune_model(model, "wanda", 0.5)
    with pytest.raises(ValueError, match="amount must be 0.5"):
        prune_model(model, "2:4", 0.7)
    with pytest.raises(ValueError, match="method must be one of"):
        prune_model(model, "random", 0.5)


# --------------------------------------------------------------------------------------------
# the command line, on the shipped tiny model


def test_prune_help_says_one_shot():
    text = run("prune", "--help").stdout
    assert "usage: tinyinfer prune" in text and "nothing is retrained" in text


@pytest.mark.parametrize("method, amount, csr", [("magnitude", "0.9", True), ("heads", "0.5", False),
                                                 ("wanda", "0.5", False)])
def test_prune_command_writes_a_loadable_model(tmp_path, method, amount, csr):
    out = tmp_path / method
    proc = run("prune", "--model", "tiny", "--method", method, "--amount", amount, "--out", str(out),
               "--calib-windows", "2", "--calib-seq-len", "64")
    assert all(word in proc.stdout for word in ("params", "nonzeros", "bytes"))
    model = tinyinfer.load(out)
    kinds = {type(model.params[n]) for n in prune.linear_weight_names(model.config)}
    assert kinds == ({CSRMatrix} if csr else {np.ndarray})
    if method == "heads":
        assert model.config.n_head == 2 and model.config.n_kv_head == 2  # tiny: 4 heads in 2 KV groups
    assert model.generate([1, 2, 3], 4).shape == (7,)


def test_prune_command_errors_teach():
    proc = run("prune", "--model", "tiny", "--method", "2:4", "--amount", "0.3", "--out", "/tmp/never", check=False)
    assert proc.returncode != 0 and "amount must be 0.5" in proc.stderr

"""Tests for tinyinfer/checkpoint.py: config.json translation, parameter names and shapes,
and loading / saving Hugging Face model folders (GPT-2 and LLaMA)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinyinfer.checkpoint import (CheckpointError, config_from_hf, config_to_hf, load,
                                  param_shapes, save)
from tinyinfer.config import ModelConfig
from tinyinfer.safetensors import read_safetensors, write_safetensors

GPT2_TINY = ModelConfig(family="gpt2", vocab_size=61, n_layer=2, n_embd=16, n_head=2, n_ctx=12)
LLAMA_TINY = ModelConfig(family="llama", vocab_size=61, n_layer=2, n_embd=16, n_head=4, n_kv_head=2,
                         n_ctx=12, ffn_hidden=24, rope_theta=500000.0, tie_word_embeddings=False)
LLAMA_TIED = ModelConfig(family="llama", vocab_size=61, n_layer=1, n_embd=8, n_head=2, n_ctx=8)

# The config.json of the "gpt2" model on the Hugging Face Hub (as transformers 4 saved it).
GPT2_HUB_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
    "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
    "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
    "summary_use_proj": True, "vocab_size": 50257,
}

# A TinyLlama-1.1B style config.json (transformers 4: top-level rope_theta).
LLAMA_HUB_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 5632, "max_position_embeddings": 2048, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000,
}


def random_params(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in param_shapes(cfg).items()}


def write_folder(folder: Path, hf_config: dict, tensors: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config))
    write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
    return folder


def require_model():
    return pytest.importorskip("tinyinfer.model")


# ----------------------------------------------------------------------------- config translation


@pytest.mark.parametrize("cfg", [
    GPT2_TINY,
    ModelConfig(family="gpt2", vocab_size=61, n_layer=1, n_embd=16, n_head=4, n_ctx=8, ffn_hidden=40, norm_eps=1e-6),
    LLAMA_TINY,
    LLAMA_TIED,
], ids=["gpt2", "gpt2-custom-ffn", "llama-gqa-untied", "llama-tied"])
def test_config_round_trip(cfg):
    assert config_from_hf(config_to_hf(cfg)) == cfg
    # ...and through actual JSON text, as it would be on disk.
    assert config_from_hf(json.loads(json.dumps(config_to_hf(cfg)))) == cfg


@pytest.mark.parametrize("rope_fields", [
    {"rope_theta": 500000.0},                                                  # transformers 4
    {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}},     # transformers 5
    {"rope_theta": 500000.0, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}},
    {"rope_theta": 500000.0, "rope_scaling": None},
    {"rope_theta": 500000.0, "rope_scaling": {"type": "default"}},
], ids=["v4", "v5", "both", "v4-null-scaling", "v4-default-scaling"])
def test_llama_rope_theta_from_either_form(rope_fields):
    d = {k: v for k, v in config_to_hf(LLAMA_TINY).items() if k not in ("rope_theta", "rope_parameters")}
    assert config_from_hf({**d, **rope_fields}) == LLAMA_TINY


def test_llama_config_writes_both_rope_forms_and_transformers_fields():
    d = config_to_hf(LLAMA_TINY, dtype="float16")
    assert d["rope_theta"] == 500000.0
    assert d["rope_parameters"] == {"rope_theta": 500000.0, "rope_type": "default"}
    assert d["torch_dtype"] == d["dtype"] == "float16"
    assert d["architectures"] == ["LlamaForCausalLM"] and d["model_type"] == "llama"
    assert d["num_key_value_heads"] == 2 and d["head_dim"] == 4 and d["intermediate_size"] == 24
    for key, value in {"use_cache": True, "pretraining_tp": 1, "attention_dropout": 0.0,
                       "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
                       "tie_word_embeddings": False, "initializer_range": 0.02}.items():
        assert d[key] == value, key
    assert not any("tinyinfer" in key for key in d)


def test_gpt2_config_fields():
    d = config_to_hf(GPT2_TINY, bos_token_id=60, eos_token_id=60)
    assert d["architectures"] == ["GPT2LMHeadModel"] and d["model_type"] == "gpt2"
    assert d["n_positions"] == d["n_ctx"] == 12 and d["n_inner"] is None
    assert d["resid_pdrop"] == d["embd_pdrop"] == d["attn_pdrop"] == 0.0
    assert d["scale_attn_weights"] is True and d["tie_word_embeddings"] is True
    assert d["activation_function"] == "gelu_new"
    assert d["bos_token_id"] == d["eos_token_id"] == 60
    assert d["torch_dtype"] == d["dtype"] == "float32"
    assert config_to_hf(GPT2_TINY)["bos_token_id"] is None  # unknown ids are null, never 50256


def test_real_hub_configs():
    gpt2 = config_from_hf(GPT2_HUB_CONFIG)
    assert (gpt2.vocab_size, gpt2.n_ctx, gpt2.n_embd, gpt2.ffn_hidden) == (50257, 1024, 768, 3072)
    assert gpt2.num_params() == 124_439_808  # GPT-2 small, as everyone quotes it
    llama = config_from_hf(LLAMA_HUB_CONFIG)
    assert (llama.n_kv_head, llama.ffn_hidden, llama.tie_word_embeddings) == (4, 5632, False)
    assert llama.num_params() == 1_100_048_384  # TinyLlama-1.1B


@pytest.mark.parametrize("base,change,words", [
    (GPT2_HUB_CONFIG, {"activation_function": "relu"}, "activation_function must be 'gelu_new'"),
    (GPT2_HUB_CONFIG, {"tie_word_embeddings": False}, "tie_word_embeddings must be True"),
    (GPT2_HUB_CONFIG, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    (GPT2_HUB_CONFIG, {"model_type": "mistral"}, "model_type must be 'gpt2' or 'llama', got 'mistral'"),
    (LLAMA_HUB_CONFIG, {"hidden_act": "gelu"}, "hidden_act must be 'silu'"),
    (LLAMA_HUB_CONFIG, {"attention_bias": True}, "attention_bias must be False"),
    (LLAMA_HUB_CONFIG, {"mlp_bias": True}, "mlp_bias must be False"),
    (LLAMA_HUB_CONFIG, {"head_dim": 127}, "even for RoPE"),
    (LLAMA_HUB_CONFIG, {"rope_scaling": {"rope_type": "llama3", "factor": 32.0}}, "rope_type 'llama3'"),
    (LLAMA_HUB_CONFIG, {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_type 'yarn'"),
    (LLAMA_HUB_CONFIG, {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "different rope_theta"),
    (LLAMA_HUB_CONFIG, {"rope_theta": -1.0}, "rope_theta must be a number in [1, 1e+30]"),
], ids=["gpt2-act", "gpt2-untied", "gpt2-layer-scale", "model-type", "llama-act", "attn-bias",
        "mlp-bias", "head-dim", "rope-scaling", "rope-parameters", "theta-conflict", "theta-negative"])
def test_bad_configs_raise_clear_errors(base, change, words):
    with pytest.raises(CheckpointError) as info:
        config_from_hf({**base, **change})
    assert words in str(info.value)


def test_missing_required_field_is_named():
    d = dict(LLAMA_HUB_CONFIG)
    del d["intermediate_size"]
    with pytest.raises(CheckpointError, match="missing required field 'intermediate_size'"):
        config_from_hf(d)


def test_llama_defaults_follow_transformers():
    d = {k: LLAMA_HUB_CONFIG[k] for k in ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                                          "num_hidden_layers", "num_attention_heads")}
    cfg = config_from_hf(d)
    assert cfg.n_kv_head == cfg.n_head and cfg.tie_word_embeddings is False
    assert (cfg.norm_eps, cfg.rope_theta, cfg.n_ctx) == (1e-6, 10000.0, 2048)


def test_config_to_hf_rejects_bad_arguments():
    with pytest.raises(CheckpointError, match="dtype must be one of"):
        config_to_hf(GPT2_TINY, dtype="int8")
    with pytest.raises(CheckpointError, match=r"eos_token_id must be an int in \[0, 61\), got 50256"):
        config_to_hf(GPT2_TINY, eos_token_id=50256)


# ----------------------------------------------------------------------------- parameter shapes


@pytest.mark.parametrize("cfg", [GPT2_TINY, LLAMA_TINY, LLAMA_TIED], ids=["gpt2", "llama-untied", "llama-tied"])
def test_param_shapes_count_matches_num_params(cfg):
    shapes = param_shapes(cfg)
    assert sum(math.prod(s) for s in shapes.values()) == cfg.num_params()
    assert ("lm_head.weight" in shapes) == (not cfg.tie_word_embeddings)


def test_param_shapes_layouts():
    gpt2 = param_shapes(GPT2_TINY)
    assert gpt2["transformer.h.1.attn.c_attn.weight"] == (16, 48)   # Conv1D: (in, out)
    assert gpt2["transformer.h.0.mlp.c_proj.weight"] == (64, 16)
    assert gpt2["transformer.wpe.weight"] == (12, 16)
    llama = param_shapes(LLAMA_TINY)
    assert llama["model.layers.1.self_attn.q_proj.weight"] == (16, 16)  # nn.Linear: (out, in)
    assert llama["model.layers.1.self_attn.k_proj.weight"] == (8, 16)   # 2 KV heads of D=4
    assert llama["model.layers.0.mlp.down_proj.weight"] == (16, 24)
    assert llama["lm_head.weight"] == (61, 16)


# ----------------------------------------------------------------------------- save (no Model needed)


class FakeTokenizer:
    def save(self, path):
        Path(path).write_text('{"fake": true}')


def test_save_writes_a_folder_the_reference_reads(tmp_path):
    ref = pytest.importorskip("safetensors.numpy")
    params = random_params(LLAMA_TINY)
    stand_in = SimpleNamespace(config=LLAMA_TINY, params=params, tokenizer=FakeTokenizer())
    save(stand_in, tmp_path / "out", dtype="float16", bos_token_id=0, eos_token_id=1)

    hf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf["torch_dtype"] == hf["dtype"] == "float16" and hf["eos_token_id"] == 1
    assert config_from_hf(hf) == LLAMA_TINY
    theirs = ref.load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(theirs) == sorted(params)
    for name, array in params.items():
        assert theirs[name].dtype == np.float16
        np.testing.assert_array_equal(theirs[name], array.astype(np.float16))
    assert read_safetensors(tmp_path / "out" / "model.safetensors")[1] == {"format": "pt"}
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"fake": true}'


def test_save_without_tokenizer_writes_no_tokenizer_file(tmp_path):
    save(SimpleNamespace(config=GPT2_TINY, params=random_params(GPT2_TINY), tokenizer=None), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert "lm_head.weight" not in read_safetensors(tmp_path / "model.safetensors")[0]


def test_save_refuses_float16_overflow(tmp_path):
    params = random_params(GPT2_TINY)
    params["transformer.ln_f.bias"][3] = 1e6  # larger than float16's max, 65504
    with pytest.raises(CheckpointError, match="transformer.ln_f.bias has 1 NaN/Inf"):
        save(SimpleNamespace(config=GPT2_TINY, params=params, tokenizer=None), tmp_path, dtype=np.float16)


def test_save_refuses_params_that_do_not_match_the_config(tmp_path):
    params = random_params(GPT2_TINY)
    params["transformer.wpe.weight"] = np.zeros((99, 16), np.float32)
    with pytest.raises(CheckpointError, match=r"transformer.wpe.weight expected \(12, 16\), found \(99, 16\)"):
        save(SimpleNamespace(config=GPT2_TINY, params=params, tokenizer=None), tmp_path)


# ----------------------------------------------------------------------------- load


def test_save_then_load_round_trip(tmp_path):
    require_model()
    for cfg in (GPT2_TINY, LLAMA_TINY, LLAMA_TIED):
        params = random_params(cfg)
        save(SimpleNamespace(config=cfg, params=params, tokenizer=None), tmp_path / cfg.family)
        model = load(tmp_path / cfg.family)
        assert model.config == cfg and model.tokenizer is None
        assert list(model.params) == list(param_shapes(cfg))
        for name, array in params.items():
            assert model.params[name].dtype == np.float32
            np.testing.assert_array_equal(model.params[name], array)


def test_load_gpt2_hub_layout(tmp_path):
    """Hub GPT-2: no 'transformer.' prefix, plus attention-mask buffers to ignore."""
    require_model()
    params = random_params(GPT2_TINY)
    hub = {name.removeprefix("transformer."): array for name, array in params.items()}
    for i in range(GPT2_TINY.n_layer):
        hub[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 12, 12), np.float32))
        hub[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    folder = write_folder(tmp_path, {**GPT2_HUB_CONFIG, "vocab_size": 61, "n_positions": 12, "n_ctx": 12,
                                     "n_embd": 16, "n_layer": 2, "n_head": 2}, hub)
    model = load(folder, dtype=np.float64)
    assert model.config == GPT2_TINY
    assert set(model.params) == set(params)
    for name, array in params.items():
        assert model.params[name].dtype == np.float64
        np.testing.assert_array_equal(model.params[name], array)


def test_load_drops_a_tied_head_copy_but_not_a_different_head(tmp_path):
    require_model()
    params = random_params(LLAMA_TIED)
    with_copy = {**params, "lm_head.weight": params["model.embed_tokens.weight"].copy()}
    model = load(write_folder(tmp_path / "copy", config_to_hf(LLAMA_TIED), with_copy))
    assert "lm_head.weight" not in model.params

    different = {**params, "lm_head.weight": params["model.embed_tokens.weight"] + 1}
    with pytest.raises(CheckpointError, match="lm_head.weight differs from model.embed_tokens.weight"):
        load(write_folder(tmp_path / "different", config_to_hf(LLAMA_TIED), different))


def test_load_sharded_checkpoint(tmp_path):
    require_model()
    params = random_params(LLAMA_TINY)
    names = list(params)
    shards = {"model-00001-of-00002.safetensors": names[:7], "model-00002-of-00002.safetensors": names[7:]}
    tmp_path.joinpath("config.json").write_text(json.dumps(config_to_hf(LLAMA_TINY)))
    for shard, shard_names in shards.items():
        write_safetensors(tmp_path / shard, {n: params[n] for n in shard_names}, {"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: s for s, ns in shards.items() for n in ns}}
    tmp_path.joinpath("model.safetensors.index.json").write_text(json.dumps(index))
    model = load(tmp_path)
    for name, array in params.items():
        np.testing.assert_array_equal(model.params[name], array)


def test_load_reads_tokenizer_json(tmp_path):
    require_model()
    tokenizer_module = pytest.importorskip("tinyinfer.tokenizer")
    byte_tokens = tokenizer_module.bytes_to_unicode()
    vocab = {byte_tokens[b]: b for b in range(256)}
    tok = tokenizer_module.Tokenizer(vocab, [], special_tokens={"<|endoftext|>": 256})
    cfg = ModelConfig(family="gpt2", vocab_size=257, n_layer=1, n_embd=8, n_head=2, n_ctx=8)
    save(SimpleNamespace(config=cfg, params=random_params(cfg), tokenizer=tok), tmp_path)
    model = load(tmp_path)
    assert model.tokenizer is not None
    assert model.tokenizer.encode("hi<|endoftext|>") == tok.encode("hi<|endoftext|>")


def _broken(params: dict, edit) -> dict:
    params = dict(params)
    edit(params)
    return params


@pytest.mark.parametrize("edit,words", [
    (lambda p: p.pop("transformer.h.1.mlp.c_fc.bias"), "missing 1 tensor(s) the config needs: transformer.h.1.mlp.c_fc.bias (64,)"),
    (lambda p: p.update({"transformer.h.9.ln_1.weight": np.ones(16, np.float32)}), "unexpected tensor(s)"),
    (lambda p: p.update({"transformer.h.0.attn.c_attn.weight": np.zeros((48, 16), np.float32)}),
     "transformer.h.0.attn.c_attn.weight expected (16, 48), found (48, 16)"),
    (lambda p: p["transformer.h.0.ln_2.weight"].__setitem__(0, np.nan), "transformer.h.0.ln_2.weight has 1 NaN/Inf"),
    (lambda p: p["transformer.wte.weight"].__setitem__((0, 0), np.inf), "transformer.wte.weight has 1 NaN/Inf"),
    (lambda p: p.update({"transformer.ln_f.bias": np.zeros(16, np.int32)}), "must be a floating-point array, found int32"),
], ids=["missing", "unexpected", "wrong-shape", "nan", "inf", "int-dtype"])
def test_load_rejects_bad_tensors(tmp_path, edit, words):
    # These all fail before a Model is built, so they run even without tinyinfer.model.
    tensors = _broken(random_params(GPT2_TINY), edit)
    folder = write_folder(tmp_path, config_to_hf(GPT2_TINY), tensors)
    with pytest.raises(CheckpointError) as info:
        load(folder)
    assert words in str(info.value)
    assert "model.safetensors" in str(info.value)  # the error says which file


def test_load_unexpected_tensors_are_listed(tmp_path):
    tensors = {**random_params(LLAMA_TIED), "extra.a": np.zeros(1, np.float32), "extra.b": np.zeros(1, np.float32)}
    with pytest.raises(CheckpointError, match=r"\['extra.a', 'extra.b'\]"):
        load(write_folder(tmp_path, config_to_hf(LLAMA_TIED), tensors))


def test_load_bad_config_names_the_file(tmp_path):
    folder = write_folder(tmp_path, {**config_to_hf(LLAMA_TIED), "hidden_act": "relu"}, random_params(LLAMA_TIED))
    with pytest.raises(CheckpointError, match=r"config\.json: llama config hidden_act must be 'silu'"):
        load(folder)


def test_load_missing_paths_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path)
    tmp_path.joinpath("config.json").write_text(json.dumps(config_to_hf(GPT2_TINY)))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load(tmp_path)


def test_load_rejects_float16_compute_dtype(tmp_path):
    with pytest.raises(CheckpointError, match=r"dtype must be one of \('float32', 'float64'\), got float16"):
        load(tmp_path, dtype=np.float16)


def test_llama_head_dim_apart_from_hidden_size_round_trips(tmp_path):
    """head_dim need not be C / H (pruned heads, some published models): shapes follow H * D."""
    import tinyinfer
    from tinyinfer.model import Model, init_params

    cfg = ModelConfig(family="llama", vocab_size=50, n_layer=1, n_embd=32, n_head=3, n_kv_head=1,
                      head_dim=8, ffn_hidden=40, n_ctx=16)
    assert param_shapes(cfg)["model.layers.0.self_attn.q_proj.weight"] == (24, 32)
    assert param_shapes(cfg)["model.layers.0.self_attn.o_proj.weight"] == (32, 24)
    assert config_from_hf(config_to_hf(cfg)) == cfg
    model = Model(cfg, init_params(cfg, 0))
    assert model.num_params() == sum(v.size for v in model.params.values())
    tinyinfer.save(model, tmp_path)
    ids = np.arange(10) % 50
    np.testing.assert_array_equal(tinyinfer.load(tmp_path).logits(ids), model.logits(ids))

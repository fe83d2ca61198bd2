"""Parity with Hugging Face transformers: same logits, same checkpoint layout, same greedy tokens.

Runs only where torch and transformers are installed (see tests/hf_parity_README.md for the
venv); everywhere else, CI included, the whole module is skipped with the reason below.

Every HF model is built here, small and random (no download), with every parameter perturbed
so that norm gains, biases and both heads are not trivially 1 / 0 / equal. Checked:

  * HF -> tinyinfer: save_pretrained(safe_serialization=True), tinyinfer.load, same logits
    (batched and 1-d, float32 and float64, up to the full context length);
  * tinyinfer -> HF: tinyinfer.save, AutoModelForCausalLM.from_pretrained with no missing,
    unexpected or mismatched keys and no warning, same logits (float32 and float16 storage);
  * greedy generation: tinyinfer's KV-cached generate == HF's generate(do_sample=False);
  * GPT-2 folders as the Hub has them (GPT2Model names, mask buffers, a tied lm_head copy);
  * tokenizer.json: HF's PreTrainedTokenizerFast encodes and decodes as tinyinfer does.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the test machines are small: one thread

import json
import logging
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip(
    "transformers", reason="HF parity tests need transformers (see tests/hf_parity_README.md)")
torch = pytest.importorskip("torch", reason="HF parity tests need torch (see tests/hf_parity_README.md)")

import tinyinfer  # noqa: E402
from tinyinfer.checkpoint import param_shapes  # noqa: E402
from tinyinfer.model import forward  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
TOL32 = 1e-4   # max abs logit difference allowed in float32 (measured: ~1e-5, see the README)
TOL64 = 1e-10  # the same in float64 (measured: ~1e-14)

# Figures measured by the tests, printed with `pytest -s` (the README quotes them).
MEASURED: dict[str, float] = {}


def _measure(key: str, a, b) -> float:
    diff = float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
    MEASURED[key] = max(diff, MEASURED.get(key, 0.0))
    print(f"[hf-parity] {key}: max abs diff {diff:.3g}")
    return diff


# --------------------------------------------------------------------------------------------
# small random HF models

VOCAB = 97

# name -> (family, config overrides). Each llama case exercises a different head layout.
CASES = {
    "gpt2": ("gpt2", {}),
    "gpt2-ffn48-eps1e-4": ("gpt2", dict(n_inner=48, layer_norm_epsilon=1e-4)),
    "llama-gqa-untied": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-gqa-tied": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-mha-theta500": ("llama", dict(num_key_value_heads=4, rope_theta=500.0, rms_norm_eps=1e-5)),
    "llama-mqa": ("llama", dict(num_key_value_heads=1, tie_word_embeddings=False)),
}


def hf_config(family: str, **overrides):
    # bos/eos/pad None: HF must neither stop generation early nor invent ids for a 97-token vocab.
    tokens = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family == "gpt2":
        base = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, **tokens)
        return transformers.GPT2Config(**{**base, **overrides})
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                rope_theta=10000.0, tie_word_embeddings=False, **tokens)
    return transformers.LlamaConfig(**{**base, **overrides})


def hf_model(case: str, seed: int = 0, dtype=torch.float32):
    """A random HF model, every parameter perturbed, in eval mode."""
    family, overrides = CASES[case]
    torch.manual_seed(seed)
    cls = transformers.GPT2LMHeadModel if family == "gpt2" else transformers.LlamaForCausalLM
    model = cls(hf_config(family, **overrides))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied head is one Parameter: perturbed once
            scale = 0.3 if p.ndim == 2 else 0.2   # norm gains ~1 +- 0.2, biases ~ +-0.2
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.to(dtype).eval()


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.as_tensor(np.atleast_2d(ids))).logits
    out = out.float().numpy() if out.dtype == torch.float16 else out.numpy()
    return out[0] if np.ndim(ids) == 1 else out


def _rope_theta(cfg) -> float:
    """RoPE base of an HF LlamaConfig: transformers 5 keeps it in rope_parameters, 4 in rope_theta."""
    params = getattr(cfg, "rope_parameters", None)
    return float(params["rope_theta"] if params else cfg.rope_theta)


def random_ids(shape, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=shape)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def hf_load(folder):
    """AutoModelForCausalLM.from_pretrained(folder), with its loading info and any warnings."""
    import warnings

    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    finally:
        logger.removeHandler(handler)
    messages = handler.messages + [str(w.message) for w in caught]
    return model.eval(), info, messages


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    yield


# --------------------------------------------------------------------------------------------
# HF -> tinyinfer


@pytest.mark.parametrize("case", CASES)
def test_hf_checkpoint_loads_with_same_logits(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = tinyinfer.load(tmp_path)
    assert model.config.family == CASES[case][0]
    assert model.config.n_kv_head == getattr(hf.config, "num_key_value_heads", hf.config.num_attention_heads)

    ids = random_ids((3, 16))
    ours = model.logits(ids)
    assert ours.shape == (3, 16, VOCAB)
    assert _measure(f"{case} hf->tinyinfer float32", ours, hf_logits(hf, ids)) <= TOL32
    one = ids[1, :11]
    assert _measure(f"{case} hf->tinyinfer float32", model.logits(one), hf_logits(hf, one)) <= TOL32
    # a whole context: every position of GPT-2's table, RoPE out to n_ctx
    full = random_ids((2, model.config.n_ctx), seed=1)
    assert _measure(f"{case} hf->tinyinfer float32", model.logits(full), hf_logits(hf, full)) <= TOL32


def _llama_in_true_float64(monkeypatch):
    """Make HF's LLaMA compute RMSNorm and RoPE in the model's dtype.

    transformers' LlamaRMSNorm casts its input to float32 and LlamaRotaryEmbedding computes
    inv_freq, the angles and cos/sin in float32 whatever the model's dtype, so a float64 HF
    LLaMA is only float32-accurate (about 3e-6 off here). These two replacements keep HF's
    formulas and change only the precision, so the float64 comparison can be tight.
    """
    from transformers.models.llama import modeling_llama as ml

    def rmsnorm(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))

    def rotary(self, x, position_ids):
        cfg = self.config
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        theta = _rope_theta(cfg)
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    monkeypatch.setattr(ml.LlamaRMSNorm, "forward", rmsnorm)
    monkeypatch.setattr(ml.LlamaRotaryEmbedding, "forward", rotary)


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa-untied", "llama-gqa-tied", "llama-mha-theta500"])
def test_hf_float64_checkpoint_matches_in_float64(case, tmp_path, monkeypatch):
    hf = hf_model(case, dtype=torch.float64)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = tinyinfer.load(tmp_path, dtype=np.float64)
    assert model.dtype == np.float64
    ids = random_ids((2, 20))
    ours = forward(model.params, model.config, ids)  # model.logits would round to float32
    assert ours.dtype == np.float64
    if CASES[case][0] == "llama":
        # stock transformers: RMSNorm and RoPE run in float32 inside a float64 model
        assert _measure(f"{case} hf->tinyinfer float64 (stock HF)", ours, hf_logits(hf, ids)) <= TOL32
        _llama_in_true_float64(monkeypatch)
    assert _measure(f"{case} hf->tinyinfer float64", ours, hf_logits(hf, ids)) <= TOL64


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa-untied"])
def test_hf_sharded_checkpoint_loads(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    assert not (tmp_path / "model.safetensors").exists()
    ids = random_ids((2, 12), seed=8)
    assert _measure(f"{case} hf sharded", tinyinfer.load(tmp_path).logits(ids), hf_logits(hf, ids)) <= TOL32


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa-untied"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_hf_half_precision_checkpoint_loads(case, dtype, tmp_path):
    """F16 / BF16 files are widened to float32 on load: same weights as HF's model cast to float32."""
    import copy

    ref = hf_model(case)
    with torch.no_grad():  # round the float32 reference's weights to what the file will hold
        for p in ref.parameters():
            p.copy_(p.to(getattr(torch, dtype)).float())
    # Not ref.to(dtype).float(): that would also round LLaMA's float buffer rotary_emb.inv_freq
    # (to 8 bits of mantissa in bfloat16), and the reference would no longer be plain RoPE.
    copy.deepcopy(ref).to(getattr(torch, dtype)).save_pretrained(tmp_path, safe_serialization=True)
    assert json.loads((tmp_path / "config.json").read_text()).get("dtype", dtype) == dtype
    model = tinyinfer.load(tmp_path)
    assert model.dtype == np.float32
    ids = random_ids((2, 12), seed=9)
    assert _measure(f"{case} hf {dtype} file", model.logits(ids), hf_logits(ref, ids)) <= TOL32


# --------------------------------------------------------------------------------------------
# tinyinfer -> HF


@pytest.mark.parametrize("case", CASES)
def test_tinyinfer_save_loads_in_transformers_without_warnings(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    model = tinyinfer.load(tmp_path / "hf")
    tinyinfer.save(model, tmp_path / "ours")

    back, info, messages = hf_load(tmp_path / "ours")
    assert type(back) is type(hf)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{key}: {info.get(key)}"
    assert messages == [], messages
    # the config means the same model there
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "intermediate_size", "max_position_embeddings",
                  "rms_norm_eps", "layer_norm_epsilon", "n_inner", "tie_word_embeddings"):
        if hasattr(hf.config, field):
            assert getattr(back.config, field) == getattr(hf.config, field), field
    for field in ("bos_token_id", "eos_token_id"):
        assert getattr(back.config, field) is None, field
    if CASES[case][0] == "llama":
        assert _rope_theta(back.config) == _rope_theta(hf.config)

    ids = random_ids((2, 16), seed=3)
    ref = hf_logits(hf, ids)
    theirs = hf_logits(back, ids)
    assert _measure(f"{case} tinyinfer->hf float32", theirs, model.logits(ids)) <= TOL32
    np.testing.assert_array_equal(theirs, ref)  # the very same float32 weights came back


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa-untied"])
def test_tinyinfer_float16_save_loads_in_transformers(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    tinyinfer.save(tinyinfer.load(tmp_path / "hf"), tmp_path / "ours", dtype="float16")

    back, info, messages = hf_load(tmp_path / "ours")
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert back.dtype == torch.float16  # config.json says so, and transformers 5 loads it as such
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{key}: {info.get(key)}"
    assert messages == [], messages
    reloaded = tinyinfer.load(tmp_path / "ours")  # float16 weights widened to float32
    ids = random_ids((2, 12), seed=4)
    assert _measure(f"{case} tinyinfer->hf float16 weights", hf_logits(back.float(), ids),
                    reloaded.logits(ids)) <= TOL32


# --------------------------------------------------------------------------------------------
# greedy generation


def _hf_greedy(hf, prompt, n):
    with torch.no_grad():
        out = hf.generate(torch.as_tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                          do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                          pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    scores = torch.stack(out.scores, dim=1).float().numpy()  # (B, n, V): the logits each step chose from
    top2 = np.sort(scores, axis=-1)[..., -2:]
    return out.sequences.numpy(), float(np.min(top2[..., 1] - top2[..., 0]))


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_matches(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path)
    model = tinyinfer.load(tmp_path)

    prompt = random_ids((2, 6), seed=5)
    theirs, margin = _hf_greedy(hf, prompt, 10)
    # a near-tie between the top two logits would make any argmax comparison meaningless
    assert margin > 10 * TOL32, f"top-2 logit margin {margin} too small for a fair comparison"
    ours = model.generate(prompt, 10)
    assert ours.shape == (2, 16)
    np.testing.assert_array_equal(ours, theirs)
    assert len(set(ours[:, 6:].ravel().tolist())) > 2  # the continuation is not one token repeated

    one = prompt[0, :4]
    theirs1, _ = _hf_greedy(hf, one[None], 10)
    np.testing.assert_array_equal(model.generate(one, 10), theirs1[0])


# --------------------------------------------------------------------------------------------
# GPT-2 folders as transformers writes them and as the Hub has them


def test_gpt2_lmhead_save_pretrained_layout_loads(tmp_path):
    """Whatever GPT2LMHeadModel.save_pretrained writes (lm_head or not, buffers or not) loads."""
    from safetensors.numpy import load_file

    hf = hf_model("gpt2")
    hf.save_pretrained(tmp_path, safe_serialization=True)
    names = set(load_file(tmp_path / "model.safetensors"))
    expected = set(param_shapes(tinyinfer.load(tmp_path).config))
    # anything beyond our names must be one of the two wrinkles checkpoint.py knows about
    extra = names - expected
    assert all(n == "lm_head.weight" or n.endswith((".attn.bias", ".attn.masked_bias")) for n in extra), extra
    assert expected <= names
    ids = random_ids((2, 10), seed=6)
    assert _measure("gpt2 save_pretrained layout", tinyinfer.load(tmp_path).logits(ids), hf_logits(hf, ids)) <= TOL32


@pytest.mark.parametrize("mask_dtype", ["float32", "bool"])
def test_gpt2_hub_style_folder_loads(tmp_path, mask_dtype):
    """GPT2Model names (no 'transformer.'), causal-mask buffers and a tied lm_head copy."""
    from safetensors.numpy import load_file, save_file

    hf = hf_model("gpt2")
    base = transformers.GPT2Model(hf.config)
    base.load_state_dict(hf.transformer.state_dict())
    base.save_pretrained(tmp_path, safe_serialization=True)
    tensors = load_file(tmp_path / "model.safetensors")
    assert not any(n.startswith("transformer.") for n in tensors)  # GPT2Model writes bare names
    n_pos = hf.config.n_positions
    for i in range(hf.config.n_layer):  # what the original Hub upload carries
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, n_pos, n_pos))).astype(mask_dtype)
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    tensors["lm_head.weight"] = tensors["wte.weight"].copy()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})

    model = tinyinfer.load(tmp_path)
    ids = random_ids((2, 12), seed=7)
    ref = hf_logits(hf, ids)
    assert _measure("gpt2 hub-style folder", model.logits(ids), ref) <= TOL32
    # transformers itself reads the same folder as the same model
    with torch.no_grad():
        again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    np.testing.assert_array_equal(hf_logits(again, ids), ref)


# --------------------------------------------------------------------------------------------
# tokenizer.json

TEXTS = [
    "def f(x):\n    return x + 1\n",
    "Hello, world! It's 2024; don't   panic.",
    "héllo wörld ✓ 🙂 日本語",
    "   leading spaces and trailing   ",
    "a\r\n\tb\n\n\nc",
    "one<|endoftext|>two <|endoftext|><|endoftext|>",
    "",
]


def _check_tokenizer_parity(path):
    from tinyinfer.tokenizer import Tokenizer

    ours = Tokenizer.from_file(path)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in TEXTS:
        ids = ours.encode(text)
        assert theirs.encode(text, add_special_tokens=False) == list(ids), text
        assert theirs.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text
        assert ours.decode(ids) == text


def test_trained_tokenizer_matches_transformers(tmp_path):
    from tinyinfer.tokenizer import Tokenizer

    corpus = ["def add(a, b):\n    return a + b\n", "Hello world, hello tokens! 123 456",
              "héllo wörld<|endoftext|>the end"] * 3
    tok = Tokenizer.train(corpus, vocab_size=300, progress=False)
    tok.save(tmp_path / "tokenizer.json")
    _check_tokenizer_parity(tmp_path / "tokenizer.json")


def test_shipped_tokenizer_matches_transformers():
    path = ROOT / "models" / "tiny" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    _check_tokenizer_parity(path)


# --------------------------------------------------------------------------------------------
# the shipped trained model, if present


def test_shipped_tiny_model_matches_transformers():
    folder = ROOT / "models" / "tiny"
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} holds no model in this checkout")
    model = tinyinfer.load(folder)
    hf, info, messages = hf_load(folder)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    text = "def f(x):\n    return"
    ids = np.array(model.tokenizer.encode(text))
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    assert theirs.encode(text, add_special_tokens=False) == ids.tolist()
    assert _measure("models/tiny (trained) hf vs tinyinfer", model.logits(ids), hf_logits(hf, ids)) <= TOL32
    hf_out, _ = _hf_greedy(hf, ids[None], 8)
    np.testing.assert_array_equal(model.generate(ids, 8), hf_out[0])


def test_zz_print_measured_figures():
    """Not a check: prints the largest difference seen per case (run with -s to see it)."""
    print("\n[hf-parity] torch", torch.__version__, "transformers", transformers.__version__)
    for key, value in sorted(MEASURED.items()):
        print(f"[hf-parity] {key:55s} {value:.3g}")
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}))

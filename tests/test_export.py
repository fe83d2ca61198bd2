"""tinyinfer/gguf_model.py and tinyinfer/export.py: GGUF for llama.cpp, Hugging Face folders for transformers,
and GGUF back in.

Checked without llama.cpp (tests/test_llamacpp_parity.py runs the real engine where installed):
  * gguf-py (llama.cpp's own reader) finds every key llama.cpp needs, with the type llama.cpp
    insists on, and every tensor with its name, type, ne order and bytes;
  * an independent forward pass written here the way ggml computes it (interleaved RoPE pairs
    (2i, 2i+1), weights dequantized by gguf-py) on the tensors gguf-py reads gives tinyinfer's
    logits: this is what proves the Q/K row permutation;
  * GGUF -> tinyinfer.load gives the same model back (same logits bit for bit, same QTensor bytes,
    same tokenizer);
  * the HF export of quantized and sparse models; transformers itself where installed;
  * the CLI and the errors.
"""
import json
import warnings

import gguf
import numpy as np
import pytest

import tinyinfer
from tinyinfer.checkpoint import CheckpointError
from tinyinfer.cli import main as cli_main
from tinyinfer.config import ModelConfig
from tinyinfer.export import dense_model, export_hf
from tinyinfer.gguf_model import export_gguf, gguf_tensor_names, load_gguf, rope_permute, rope_unpermute
from tinyinfer.gguf import GGUFTensor, TensorType, read_gguf, write_gguf
from tinyinfer.model import Model, init_params
from tinyinfer.quant import QTensor, quantize
from tinyinfer.quant.model import quantize_model
from tinyinfer.sparse.model import sparsify_model
from tinyinfer.tokenizer import Tokenizer

from conftest import ROOT, small_model

TEACHER_TOKENIZER = Tokenizer.from_file(f"{ROOT}/models/tiny/tokenizer.json")
PROMPT = "def add(x, y):\n    return x + y\n"


def llama(seed=0, tokenizer=TEACHER_TOKENIZER, **overrides):
    """A small random LLaMA with every width a multiple of 32 (so Q8_0 / Q4_0 apply).

    head_dim 24 with 4 heads: H * D = 96 != C = 64, so key_length is needed; GQA (2 KV heads);
    untied head unless overridden; rope_theta and eps away from the defaults.
    """
    base = dict(family="llama", vocab_size=tokenizer.vocab_size if tokenizer else 96, n_layer=2, n_embd=64,
                n_head=4, n_kv_head=2, head_dim=24, n_ctx=64, ffn_hidden=96, norm_eps=1e-4, rope_theta=500.0,
                tie_word_embeddings=False)
    base.update(overrides)
    config = ModelConfig(**base)
    params = init_params(config, seed)
    rng = np.random.default_rng(seed + 1)
    for name, value in params.items():  # norm gains away from 1, matrices larger: differences show
        value += (rng.standard_normal(value.shape) * (0.2 if value.ndim == 1 else 0.05)).astype(np.float32)
    return Model(config, params, tokenizer)


# --------------------------------------------------------------------------------------------
# an independent reference: ggml's llama graph in NumPy, on tensors read by gguf-py


def reference_logits(path, ids):
    """Logits (T, V) computed from a GGUF file the way llama.cpp's llama graph does, float64.

    Uses nothing of tinyinfer: gguf-py reads and dequantizes, RoPE rotates *adjacent* pairs.
    """
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    w = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        w[t.name] = np.asarray(data, dtype=np.float64).reshape(tuple(int(n) for n in reversed(t.shape)))
    H, G = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    D, eps = meta["llama.attention.key_length"], meta["llama.attention.layer_norm_rms_epsilon"]
    base = meta["llama.rope.freq_base"]
    T = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x):  # x: (T, heads, D); ggml's "normal" mode rotates (x[2i], x[2i+1]) by pos * base^(-2i/D)
        angle = np.arange(T)[:, None] * base ** (-np.arange(0, D, 2) / D)[None, :]  # (T, D/2)
        cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    x = w["token_embd.weight"][ids]  # (T, C)
    for i in range(meta["llama.block_count"]):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(T, H, D))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(T, G, D))
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, G, D)
        k, v = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)  # (T, H, D)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(D)
        scores += np.triu(np.full((T, T), -np.inf), 1)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = np.einsum("hts,shd->thd", att, v).reshape(T, H * D)
        x = x + y @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"])
    head = w.get("output.weight", w["token_embd.weight"])  # tied: llama.cpp reuses token_embd
    return x @ head.T


BLOCK_FORMATS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")


@pytest.mark.parametrize("quant", [None, "f16", *BLOCK_FORMATS])
@pytest.mark.parametrize("tied", [False, True])
def test_ggml_style_forward_on_the_file_matches_tinyinfer(tmp_path, quant, tied):
    model = llama(tie_word_embeddings=tied)
    path = export_gguf(model, tmp_path / "m.gguf", quant=quant)
    ids = np.array(TEACHER_TOKENIZER.encode(PROMPT)[:40])
    # the function the file stores: float weights (rounded to float16 for f16), quantized ones dequantized
    expected_model = model
    if quant == "f16":
        expected_model = Model(model.config, {n: w.astype(np.float16).astype(np.float32) if w.ndim == 2 else w
                                              for n, w in model.params.items()}, None)
    elif quant in BLOCK_FORMATS:
        expected_model = dense_model(quantize_model(model, quant))
    expected = expected_model.logits(ids)
    got = reference_logits(path, ids)
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    # and the permutation is what makes it work: without it the logits are far off
    assert np.abs(reference_logits_unpermuted(model, tmp_path, ids) - model.logits(ids)).max() > 1e-2


def reference_logits_unpermuted(model, tmp_path, ids):
    """The same reference on a file written *without* the RoPE row permutation."""
    import tinyinfer.gguf_model as export

    saved = export._rope_heads
    export._rope_heads = lambda config, name: None
    try:
        path = export_gguf(model, tmp_path / "unpermuted.gguf")
    finally:
        export._rope_heads = saved
    return reference_logits(path, ids)


def test_rope_permute_is_convert_hf_to_gguf_permute_and_unpermute_inverts_it():
    rng = np.random.default_rng(0)
    for heads, D in ((4, 8), (2, 24), (1, 2)):
        w = rng.standard_normal((heads * D, 32)).astype(np.float32)
        # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, as published
        theirs = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        np.testing.assert_array_equal(rope_permute(w, heads, D), theirs)
        np.testing.assert_array_equal(rope_unpermute(rope_permute(w, heads, D), heads, D), w)
        qt = quantize(w, "q4_0")
        permuted = rope_permute(qt, heads, D)
        assert isinstance(permuted, QTensor)
        np.testing.assert_array_equal(permuted.dequantize(), rope_permute(qt.dequantize(), heads, D))


# --------------------------------------------------------------------------------------------
# every key and tensor, read by gguf-py

U32, F32, STR, BOOL = (gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING,
                       gguf.GGUFValueType.BOOL)


@pytest.mark.parametrize("quant, file_type, linear_type", [
    (None, 0, gguf.GGMLQuantizationType.F32), ("f32", 0, gguf.GGMLQuantizationType.F32),
    ("f16", 1, gguf.GGMLQuantizationType.F16), ("q8_0", 7, gguf.GGMLQuantizationType.Q8_0),
    ("q4_0", 2, gguf.GGMLQuantizationType.Q4_0), ("q4_1", 3, gguf.GGMLQuantizationType.Q4_1),
    ("q5_0", 8, gguf.GGMLQuantizationType.Q5_0), ("q5_1", 9, gguf.GGMLQuantizationType.Q5_1),
    ("iq4_nl", 25, gguf.GGMLQuantizationType.IQ4_NL)])
def test_every_key_and_tensor_as_gguf_py_reads_them(tmp_path, quant, file_type, linear_type):
    model = llama()
    cfg = model.config
    path = export_gguf(model, tmp_path / "m.gguf", quant=quant, name="tiny test")
    reader = gguf.GGUFReader(path)
    expected = {
        "general.architecture": (STR, "llama"), "general.name": (STR, "tiny test"),
        "general.alignment": (U32, 32), "general.file_type": (U32, file_type),
        "llama.vocab_size": (U32, cfg.vocab_size), "llama.context_length": (U32, 64),
        "llama.embedding_length": (U32, 64), "llama.block_count": (U32, 2),
        "llama.feed_forward_length": (U32, 96), "llama.attention.head_count": (U32, 4),
        "llama.attention.head_count_kv": (U32, 2), "llama.attention.key_length": (U32, 24),
        "llama.attention.value_length": (U32, 24), "llama.rope.dimension_count": (U32, 24),
        "llama.rope.freq_base": (F32, 500.0), "llama.attention.layer_norm_rms_epsilon": (F32, np.float32(1e-4)),
        "tokenizer.ggml.model": (STR, "gpt2"), "tokenizer.ggml.pre": (STR, "gpt-2"),
        "tokenizer.ggml.add_bos_token": (BOOL, False), "tokenizer.ggml.add_eos_token": (BOOL, False),
        "tokenizer.ggml.bos_token_id": (U32, TEACHER_TOKENIZER.eos_id),
        "tokenizer.ggml.eos_token_id": (U32, TEACHER_TOKENIZER.eos_id),
    }
    if quant in BLOCK_FORMATS:
        expected["general.quantization_version"] = (U32, 2)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(fields) == set(expected) | {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                           "tokenizer.ggml.merges"}
    for key, (vtype, value) in expected.items():
        assert fields[key].types == [vtype], key
        assert fields[key].contents() == value, key
    tok = TEACHER_TOKENIZER
    assert fields["tokenizer.ggml.tokens"].contents() == [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert fields["tokenizer.ggml.token_type"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert fields["tokenizer.ggml.token_type"].contents() == [3 if i == tok.eos_id else 1 for i in range(tok.vocab_size)]
    assert fields["tokenizer.ggml.merges"].contents() == [f"{a} {b}" for a, b in tok.merges]

    # tensors: names, ggml types, ne order, and bytes equal to what tinyinfer holds
    stored = quantize_model(model, quant) if quant in BLOCK_FORMATS else model
    names = gguf_tensor_names(cfg)
    by_name = {t.name: t for t in reader.tensors}
    assert set(by_name) == set(names.values())
    for hf_name, gguf_name in names.items():
        t, w = by_name[gguf_name], stored.params[hf_name]
        assert tuple(int(n) for n in t.shape) == tuple(reversed(w.shape)), gguf_name
        if "attn_q" in gguf_name or "attn_k" in gguf_name:
            w = rope_permute(w, 4 if "attn_q" in gguf_name else 2, 24)
        if isinstance(w, QTensor):
            assert t.tensor_type == linear_type, gguf_name
            assert np.asarray(t.data).tobytes() == w.to_bytes().tobytes(), gguf_name  # byte for byte
        elif w.ndim == 1 or hf_name == "model.embed_tokens.weight" and quant in BLOCK_FORMATS:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, gguf_name  # norms (and a float embedding)
            np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w)
        else:
            assert t.tensor_type == linear_type if hf_name != "lm_head.weight" or quant not in BLOCK_FORMATS \
                else t.tensor_type == gguf.GGMLQuantizationType.F32, gguf_name
            dtype = np.float16 if t.tensor_type == gguf.GGMLQuantizationType.F16 else np.float32
            np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w.astype(dtype))


def test_tokenizer_smaller_than_the_embedding_is_padded(tmp_path):
    tok = Tokenizer.train(["hello world, hello tinyinfer " * 20], 270)
    model = llama(tokenizer=tok, vocab_size=288)
    path = export_gguf(model, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 288 and tokens[-1] == "[PAD287]"
    assert reader.fields["tokenizer.ggml.token_type"].contents()[tok.vocab_size:] == [5] * (288 - tok.vocab_size)
    back = load_gguf(path)
    assert back.tokenizer.encode("hello world") == tok.encode("hello world")


def test_model_without_tokenizer_exports_vocab_none(tmp_path):
    path = export_gguf(llama(tokenizer=None), tmp_path / "m.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.model"].contents() == "none"
    assert reader.fields["llama.vocab_size"].contents() == 96
    assert load_gguf(path).tokenizer is None


# --------------------------------------------------------------------------------------------
# GGUF -> tinyinfer


@pytest.mark.parametrize("quant", [None, "f16", *BLOCK_FORMATS])
def test_load_gguf_gives_the_same_model_back(tmp_path, quant):
    model = llama(tie_word_embeddings=quant == "q4_0")
    path = export_gguf(model, tmp_path / "m.gguf", quant=quant)
    back = tinyinfer.load(path)  # the .gguf dispatch in checkpoint.load
    assert back.config == model.config
    ids = np.array(TEACHER_TOKENIZER.encode(PROMPT)[:50])
    if quant in BLOCK_FORMATS:
        ref = quantize_model(model, quant)
        for name, w in ref.params.items():
            if isinstance(w, QTensor):
                assert isinstance(back.params[name], QTensor) and back.params[name].fmt == quant
                assert back.params[name].to_bytes().tobytes() == w.to_bytes().tobytes(), name
    elif quant == "f16":
        ref = Model(model.config, {n: w.astype(np.float16).astype(np.float32) if w.ndim == 2 else w
                                   for n, w in model.params.items()}, model.tokenizer)
    else:
        ref = model
    np.testing.assert_array_equal(back.logits(ids), ref.logits(ids))
    assert back.tokenizer.encode(PROMPT) == TEACHER_TOKENIZER.encode(PROMPT)
    assert back.tokenizer.special_tokens == TEACHER_TOKENIZER.special_tokens
    assert tinyinfer.load(path, dtype=np.float64).dtype == np.float64


def test_load_gguf_written_by_gguf_py_with_a_quantized_embedding(tmp_path):
    """A file as llama.cpp's converter writes it (Q8_0 token_embd, gguf-py's writer) also loads."""
    model = llama(tokenizer=None, tie_word_embeddings=True)
    cfg = model.config
    path = tmp_path / "theirs.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for key, value in (("context_length", 64), ("embedding_length", 64), ("block_count", 2),
                       ("feed_forward_length", 96), ("attention.head_count", 4), ("attention.head_count_kv", 2),
                       ("attention.key_length", 24), ("attention.value_length", 24), ("rope.dimension_count", 24)):
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.rope.freq_base", 500.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-4)
    expected = dict(model.params)
    for hf_name, gguf_name in gguf_tensor_names(cfg).items():
        w = model.params[hf_name]
        if w.ndim == 2:
            qt = quantize(w, "q8_0")
            expected[hf_name] = qt.dequantize()
            if "q_proj" in hf_name or "k_proj" in hf_name:
                qt = rope_permute(qt, 4 if "q_proj" in hf_name else 2, 24)
            writer.add_tensor(gguf_name, qt.to_bytes().reshape(w.shape[0], -1),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = tinyinfer.load(path)
    assert back.config == cfg and back.tokenizer is None
    # the embedding stays in its blocks: lookups dequantize rows, the tied head multiplies by the blocks
    assert isinstance(back.params["model.embed_tokens.weight"], QTensor)
    assert isinstance(tinyinfer.load(path, dtype="float32").params["model.embed_tokens.weight"], np.ndarray)
    ids = np.arange(20) % cfg.vocab_size
    np.testing.assert_allclose(dense_model(back).logits(ids), Model(cfg, expected).logits(ids), atol=1e-5)


def _write_llama_gguf(path, edit_meta=None, edit_tensors=None):
    model = llama(tokenizer=None)
    export_gguf(model, path)
    f = read_gguf(path)
    meta = dict(f.metadata)
    tensors = [GGUFTensor(t.name, t.type, t.shape, f.tensor_bytes(t.name).copy()) for t in f.tensors.values()]
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        tensors = edit_tensors(tensors)
    write_gguf(path, meta, tensors)
    return path


def _retype(tensors, name, tensor_type, shape, nbytes):
    """Replace tensor `name` by zeros of another ggml type (a valid file tinyinfer cannot run)."""
    return [GGUFTensor(name, tensor_type, shape, np.zeros(nbytes, np.uint8)) if t.name == name else t
            for t in tensors]


@pytest.mark.parametrize("edit_meta, edit_tensors, words", [
    (lambda m: m.update({"general.architecture": "gpt2"}), None, "only 'llama'"),
    (lambda m: m.pop("llama.block_count"), None, "lacks 'llama.block_count'"),
    (lambda m: m.update({"llama.block_count": "two"}), None, "must be a single int"),
    (lambda m: m.update({"llama.block_count": 3}), None, "missing tensor"),
    (lambda m: m.update({"llama.rope.dimension_count": 8}), None, "no partial RoPE"),
    (lambda m: m.update({"llama.rope.scaling.type": "yarn"}), None, "unscaled RoPE"),
    (lambda m: m.update({"llama.vocab_size": 5}), None, "token_embd has"),
    (None, lambda ts: ts + [GGUFTensor.from_array("extra.weight", np.ones(3))], "unexpected tensor"),
    (None, lambda ts: _retype(ts, "blk.0.ffn_up.weight", TensorType.Q4_K, (96, 256), 96 * 144), "is Q4_K"),
    (None, lambda ts: _retype(ts, "blk.0.ffn_up.weight", TensorType.I32, (96, 64), 96 * 64 * 4), "is I32"),
])
def test_load_gguf_refuses_what_it_cannot_run(tmp_path, edit_meta, edit_tensors, words):
    path = _write_llama_gguf(tmp_path / "bad.gguf", edit_meta, edit_tensors)
    with pytest.raises(CheckpointError, match=words):
        tinyinfer.load(path)


def test_load_gguf_corrupt_file_is_a_checkpoint_error(tmp_path):
    path = export_gguf(llama(tokenizer=None), tmp_path / "m.gguf")
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        tinyinfer.load(tmp_path / "cut.gguf")
    (tmp_path / "magic.gguf").write_bytes(b"GGML" + data[4:])
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        tinyinfer.load(tmp_path / "magic.gguf")
    (tmp_path / "version.gguf").write_bytes(data[:4] + (7).to_bytes(4, "little") + data[8:])
    with pytest.raises(CheckpointError, match="version 7"):
        tinyinfer.load(tmp_path / "version.gguf")


def test_load_gguf_unknown_pre_tokenizer_is_an_error(tmp_path):
    """Encoding with another pre-tokenizer would give plausible but wrong ids: refuse, naming it."""
    path = _write_llama_gguf(tmp_path / "m.gguf", lambda m: m.update({
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such-pre", "tokenizer.ggml.tokens": ["a"],
        "tokenizer.ggml.merges": []}))
    with pytest.raises(CheckpointError, match="tokenizer.ggml.pre is 'no-such-pre'"):
        tinyinfer.load(path)


# --------------------------------------------------------------------------------------------
# export errors


def test_export_gguf_refuses_gpt2_and_bad_quant(tmp_path):
    with pytest.raises(CheckpointError, match="LLaMA-family models only.*'gpt2'"):
        export_gguf(small_model("gpt2"), tmp_path / "g.gguf")
    with pytest.raises(CheckpointError, match="quant must be one of"):
        export_gguf(llama(), tmp_path / "m.gguf", quant="q5_k")
    with pytest.raises(CheckpointError, match="already quantized to \\['q4_0'\\]"):
        export_gguf(quantize_model(llama(), "q4_0"), tmp_path / "m.gguf", quant="q8_0")
    with pytest.raises(CheckpointError, match="tokenizer has 1024 tokens but the model's embedding only 96"):
        small = llama(tokenizer=None)  # 96 embedding rows
        export_gguf(Model(small.config, small.params, TEACHER_TOKENIZER), tmp_path / "m.gguf")
    with pytest.raises(CheckpointError, match="must be a tinyinfer Model"):
        export_gguf({"not": "a model"}, tmp_path / "m.gguf")


def test_already_quantized_model_is_written_as_is(tmp_path):
    q = quantize_model(llama(), "q8_0")
    a = read_gguf(export_gguf(q, tmp_path / "a.gguf"))
    b = read_gguf(export_gguf(q, tmp_path / "b.gguf", quant="q8_0"))
    assert a.metadata["general.file_type"] == 7
    assert a.buffer[a.data_start:] == b.buffer[b.data_start:]


def test_sparse_model_exports_dense(tmp_path):
    model = llama(tokenizer=None)
    masks = {n: np.random.default_rng(0).random(w.shape) > 0.9 for n, w in model.params.items() if w.ndim == 2
             and n.startswith("model.layers")}
    sparse = sparsify_model(model, masks, min_sparsity=0.5)
    assert any(not isinstance(w, np.ndarray) for w in sparse.params.values())
    back = load_gguf(export_gguf(sparse, tmp_path / "s.gguf"))
    ids = np.arange(30) % 96
    np.testing.assert_allclose(back.logits(ids), sparse.logits(ids), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Hugging Face export


@pytest.mark.parametrize("kind", ["float", "q8_0", "q4_0", "csr", "gpt2-q8_0"])
def test_export_hf_is_a_plain_float_folder(tmp_path, kind):
    if kind.startswith("gpt2"):
        model = quantize_model(small_model("gpt2", n_embd=32, ffn_hidden=64), "q8_0")
    elif kind == "csr":
        base = llama()
        masks = {n: np.random.default_rng(1).random(w.shape) > 0.85 for n, w in base.params.items()
                 if n.startswith("model.layers") and w.ndim == 2}
        model = sparsify_model(base, masks, min_sparsity=0.5)
    else:
        model = llama() if kind == "float" else quantize_model(llama(), kind)
    out = export_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors"] + (["tokenizer.json"] if model.tokenizer else []))
    from tinyinfer.safetensors import read_safetensors

    tensors, metadata = read_safetensors(out / "model.safetensors")
    assert all(t.dtype == np.float32 for t in tensors.values())
    assert set(metadata) == {"format"}  # no quantization / sparsity descriptions: transformers reads it plainly
    back = tinyinfer.load(out)
    assert all(isinstance(w, np.ndarray) for w in back.params.values())
    ids = np.arange(20) % model.config.vocab_size
    np.testing.assert_allclose(back.logits(ids), dense_model(model).logits(ids), atol=1e-6)
    if model.tokenizer is not None:
        assert json.loads((out / "config.json").read_text())["eos_token_id"] == model.tokenizer.eos_id


def test_export_hf_float16_and_bad_dtype(tmp_path):
    out = export_hf(llama(), tmp_path / "hf16", dtype="float16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    with pytest.raises(CheckpointError, match="dtype must be one of"):
        export_hf(llama(), tmp_path / "x", dtype="bfloat16")


@pytest.mark.parametrize("kind", ["float", "q4_0", "teacher", "teacher-q8_0", "teacher-q4_0"])
def test_transformers_loads_the_hf_export(tmp_path, kind):
    """Where transformers + torch are installed (/work/hfvenv, see tests/export_README.md)."""
    transformers = pytest.importorskip("transformers", reason="needs transformers (tests/export_README.md)")
    torch = pytest.importorskip("torch", reason="needs torch (tests/export_README.md)")
    torch.set_num_threads(1)
    base = tinyinfer.load(f"{ROOT}/models/teacher") if kind.startswith("teacher") else llama()
    fmt = kind.split("-")[-1] if "q" in kind else None
    model = quantize_model(base, fmt) if fmt else base
    out = export_hf(model, tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    ids = np.array((TEACHER_TOKENIZER.encode(PROMPT) * 20)[: model.config.n_ctx])  # the whole context
    with torch.no_grad():
        theirs = hf(torch.tensor(ids[None])).logits[0].float().numpy()
    ours = dense_model(model).logits(ids)
    diff = float(np.abs(theirs - ours).max())
    print(f"[export-hf] {kind}: max abs logit diff vs transformers {diff:.3g}")
    assert diff < 1e-4


# --------------------------------------------------------------------------------------------
# the command line


def test_cli_export_gguf_and_hf(tmp_path, capsys):
    src = tmp_path / "src"
    tinyinfer.save(llama(), src)
    assert cli_main(["export", "--model", str(src), "--format", "gguf", "--quant", "q4_0",
                     "--out", str(tmp_path / "m.gguf")]) == 0
    assert "q4_0" in capsys.readouterr().out
    f = read_gguf(tmp_path / "m.gguf")
    assert f.metadata["general.file_type"] == 2
    assert cli_main(["export", "--model", str(tmp_path / "m.gguf"), "--format", "hf",
                     "--out", str(tmp_path / "hf")]) == 0  # GGUF in, HF out
    back = tinyinfer.load(tmp_path / "hf")
    ids = np.arange(10)
    np.testing.assert_allclose(back.logits(ids), dense_model(tinyinfer.load(tmp_path / "m.gguf")).logits(ids),
                               atol=1e-6)


def test_cli_export_errors(tmp_path, capsys):
    src = tmp_path / "g"
    tinyinfer.save(small_model("gpt2"), src)
    with pytest.raises(SystemExit, match="LLaMA-family"):
        cli_main(["export", "--model", str(src), "--format", "gguf", "--out", str(tmp_path / "g.gguf")])
    with pytest.raises(SystemExit) as e:
        cli_main(["export", "--model", str(src), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--quant q8_0 applies to --format gguf"):
        cli_main(["export", "--model", str(src), "--format", "hf", "--quant", "q8_0", "--out", str(tmp_path / "x")])

"""The transformer: GPT-2 and LLaMA families on one code path, forward and backward, NumPy only.

Lessons: lessons/01-transformer.py (forward), lessons/03-training.py (backward).

Parameters live in a plain dict with Hugging Face's names and shapes (see tinyinfer/checkpoint.py),
so `model.params["model.layers.0.self_attn.q_proj.weight"]` is exactly what transformers stores
(param_shapes lists them all).
GPT-2 keeps its Conv1D weights as (in, out); the forward reads them through a transposed view so
every linear layer here is `y = x @ w.T + b` with w: (N, K), like torch.nn.Linear and ggml.

A linear layer only ever calls `matmul(w, x)`: w can be a dense array or any object with a
`.matmul(x)` method (a quantized QTensor, a CSRMatrix), so optimizations swap one part of the
path and never fork the model.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .config import ModelConfig

# --------------------------------------------------------------------------------------------
# parameter names (Hugging Face layout)


def layer_names(config: ModelConfig, i: int) -> dict:
    """Hugging Face names of block i's parameters, by role."""
    if config.family == "gpt2":
        p = f"transformer.h.{i}."
        return dict(norm1=p + "ln_1", norm2=p + "ln_2", qkv=p + "attn.c_attn", o=p + "attn.c_proj",
                    up=p + "mlp.c_fc", down=p + "mlp.c_proj")
    p = f"model.layers.{i}."
    return dict(norm1=p + "input_layernorm", norm2=p + "post_attention_layernorm",
                q=p + "self_attn.q_proj", k=p + "self_attn.k_proj", v=p + "self_attn.v_proj",
                o=p + "self_attn.o_proj", gate=p + "mlp.gate_proj", up=p + "mlp.up_proj",
                down=p + "mlp.down_proj")


def embedding_name(config):
    return "transformer.wte.weight" if config.family == "gpt2" else "model.embed_tokens.weight"


def final_norm_name(config):
    return "transformer.ln_f" if config.family == "gpt2" else "model.norm"


def head_name(config):
    return embedding_name(config) if config.tie_word_embeddings else "lm_head.weight"


def param_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """Every parameter's Hugging Face name and shape, in model order (Model.params keys)."""
    return _gpt2_shapes(cfg) if cfg.family == "gpt2" else _llama_shapes(cfg)


def _gpt2_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    # GPT-2 uses Conv1D, which stores weights as (in, out): the transpose of nn.Linear.
    C, F, V = cfg.n_embd, cfg.ffn_hidden, cfg.vocab_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg.n_ctx, C)}
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        shapes.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),  # fused Q, K, V
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (C, F), p + "mlp.c_fc.bias": (F,),
            p + "mlp.c_proj.weight": (F, C), p + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    return shapes  # no lm_head: GPT-2's head is always wte


def _llama_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    # nn.Linear stores weights as (out, in).
    C, F, V, D = cfg.n_embd, cfg.ffn_hidden, cfg.vocab_size, cfg.head_dim
    HD, GD = cfg.n_head * D, cfg.n_kv_head * D
    shapes = {"model.embed_tokens.weight": (V, C)}
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (C,),
            p + "self_attn.q_proj.weight": (HD, C),
            p + "self_attn.k_proj.weight": (GD, C),  # G KV heads: smaller than q_proj under GQA
            p + "self_attn.v_proj.weight": (GD, C),
            p + "self_attn.o_proj.weight": (C, HD),
            p + "post_attention_layernorm.weight": (C,),
            p + "mlp.gate_proj.weight": (F, C),
            p + "mlp.up_proj.weight": (F, C),
            p + "mlp.down_proj.weight": (C, F),
        })
    shapes["model.norm.weight"] = (C,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def linear_weight(params, config, name):
    """The (N, K) weight of linear layer `name` (GPT-2's Conv1D (K, N) is read transposed)."""
    w = params[name + ".weight"]
    return w.T if config.family == "gpt2" and isinstance(w, np.ndarray) else w


def embed(w, ids):
    """Token embedding lookup, ids (...,) -> (..., C): rows of a dense (V, C) array, or of a quantized
    table (a QTensor, as a GGUF file stores token_embd), which dequantizes only the rows asked for."""
    if isinstance(w, np.ndarray):
        return w[ids]
    return w.take_rows(ids.reshape(-1)).reshape(*ids.shape, w.shape[1])


def matmul(w, x):
    """x @ w.T for a dense (N, K) array, or w.matmul(x) for a quantized, sparse or transposed weight."""
    return x @ w.T if isinstance(w, np.ndarray) else w.matmul(x)


def head_product(head, x):
    """The logits x @ head.T. A quantized head (QTensor) rounds x in two 8-bit passes rather than
    one (tinyinfer/quant/residual.py): the head's 8-bit activations alone flip the greedy token at
    0.5-1% of positions of a real model (SmolLM2), twice the product's multiply-adds fix that, and
    the weights are still read once. Other weights as matmul."""
    from .quant.formats import QTensor

    if isinstance(head, QTensor):
        from .quant.residual import two_pass_matmul

        return two_pass_matmul(head, x)
    return matmul(head, x)


class TransposedWeight:
    """A dense (N, K) weight kept as its transpose (K, N), contiguous, for inference.

    Why: x @ w.T with a few rows of x (2 to a few dozen: a batch of decoding sequences, a
    speculative verification of k + 1 tokens) sends OpenBLAS 0.3.31's sgemm down a path that
    copies ("packs") the whole transposed weight on every call; x @ wt with wt contiguous does
    not. Measured on the teacher's (512, 192), one thread, quiet machine: 4 rows 73 us vs 9 us,
    8 rows 75 vs 16, 32 rows 133 vs 81; 1 row the same (6-8 us, sgemv either way).
    The engine and speculative decoding build these once (`inference_params`); training and
    Model.logits keep the plain arrays, so in-place updates of model.params are always seen there.
    """

    def __init__(self, w: np.ndarray):
        self.wt = np.ascontiguousarray(w.T)  # (K, N)
        self.shape = w.shape  # (N, K), as the model expects of any weight
        self.dtype = w.dtype

    @property
    def nbytes(self) -> int:
        return self.wt.nbytes

    def matmul(self, x):
        return x @ self.wt  # (..., K) @ (K, N)


def inference_params(params: dict, config) -> dict:
    """params with every LLaMA linear weight inside the blocks as a TransposedWeight (a copy:
    call it again after changing params). GPT-2 stores its Conv1D weights (K, N) already, and
    quantized or sparse weights have their own kernels, so those are passed through."""
    if config.family != "llama":
        return dict(params)
    out = dict(params)
    for i in range(config.n_layer):
        for role in ("q", "k", "v", "o", "gate", "up", "down"):
            name = layer_names(config, i)[role] + ".weight"
            if isinstance(out[name], np.ndarray):
                out[name] = TransposedWeight(out[name])
    return out


# --------------------------------------------------------------------------------------------
# initialisation


def init_params(config: ModelConfig, seed: int = 0, dtype=np.float32) -> dict:
    """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
    rng = np.random.default_rng(seed)
    resid_std = 0.02 / np.sqrt(2 * config.n_layer)
    params = {}
    for name, shape in param_shapes(config).items():
        if len(shape) == 1:  # norm gains start at 1, biases at 0
            fill = 1.0 if name.endswith("norm.weight") or ("ln_" in name and name.endswith(".weight")) else 0.0
            params[name] = np.full(shape, fill, dtype=dtype)
        else:
            std = resid_std if name.endswith(("c_proj.weight", "o_proj.weight", "down_proj.weight")) else 0.02
            params[name] = (rng.standard_normal(shape) * std).astype(dtype)
    return params


# --------------------------------------------------------------------------------------------
# forward


def _norm_forward(x, params, config, name):
    if config.family == "gpt2":
        return ops.layernorm_forward(x, params[name + ".weight"], params[name + ".bias"], config.norm_eps)
    return ops.rmsnorm_forward(x, params[name + ".weight"], config.norm_eps)


def _bias(params, config, name):
    return params[name + ".bias"] if config.family == "gpt2" else None


def _linear(x, params, config, name, caches):
    w = linear_weight(params, config, name)
    b = _bias(params, config, name)
    if caches is None:  # inference: any weight type
        out = matmul(w, x)
        return out + b if b is not None else out
    out, cache = ops.linear_forward(x, w, b)
    caches[name] = cache
    return out


def block_forward(x, params, config, i, positions, kv_cache=None, caches=None):
    """One transformer block. x: (B, T, C) at absolute positions (T,) -> (B, T, C).

    kv_cache (inference) is any object with attend(layer, q, k, v) -> (B, H, T, D): it stores this
    step's keys and values and attends over everything stored so far (tinyinfer/kv_cache.py keeps
    one contiguous array per layer; the engine's paged cache reads through block tables).
    caches (training) collects what block_backward needs. Pass at most one of the two.
    """
    names = layer_names(config, i)
    B, T, C = x.shape
    H, G, D = config.n_head, config.n_kv_head, config.head_dim

    # --- attention ---
    h, c = _norm_forward(x, params, config, names["norm1"])
    if caches is not None:
        caches["norm1"] = c
    if config.family == "gpt2":
        qkv = _linear(h, params, config, names["qkv"], caches)  # (B, T, 3C), fused projection
        q, k, v = np.split(qkv, 3, axis=-1)
    else:
        q = _linear(h, params, config, names["q"], caches)  # (B, T, H*D)
        k = _linear(h, params, config, names["k"], caches)  # (B, T, G*D)
        v = _linear(h, params, config, names["v"], caches)  # (B, T, G*D)
    q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
    k = k.reshape(B, T, G, D).transpose(0, 2, 1, 3)  # (B, G, T, D)
    v = v.reshape(B, T, G, D).transpose(0, 2, 1, 3)  # (B, G, T, D)
    if config.family == "llama":  # positions enter by rotating q and k (GPT-2 added them at the input)
        cos, sin = ops.rope_tables(D, positions, config.rope_theta, x.dtype)
        q, cq = ops.rope_forward(q, cos, sin)
        k, ck = ops.rope_forward(k, cos, sin)
        if caches is not None:
            caches["rope"] = cq
    if kv_cache is not None:  # inference: the cache stores k, v and attends over the whole past
        y = kv_cache.attend(i, q, k, v)  # (B, H, T, D)
    else:
        y, c = ops.attention_forward(q, k, v)  # (B, H, T, D)
        if caches is not None:
            caches["attn"] = c
    y = y.transpose(0, 2, 1, 3).reshape(B, T, H * D)
    x = x + _linear(y, params, config, names["o"], caches)

    # --- MLP ---
    h, c = _norm_forward(x, params, config, names["norm2"])
    if caches is not None:
        caches["norm2"] = c
    if config.family == "gpt2":
        a, c = ops.gelu_forward(_linear(h, params, config, names["up"], caches))  # (B, T, F)
    else:
        gate = _linear(h, params, config, names["gate"], caches)  # (B, T, F)
        up = _linear(h, params, config, names["up"], caches)  # (B, T, F)
        a, c = ops.swiglu_forward(gate, up)
    if caches is not None:
        caches["act"] = c
    return x + _linear(a, params, config, names["down"], caches)


def forward(params, config, ids, start_pos=0, kv_cache=None, caches=None, positions=None,
            logits_rows=None):
    """ids: int (B, T) at positions start_pos .. start_pos+T-1 -> logits (B, T, V).

    positions (T,) overrides start_pos with any positions, one per column: the engine packs the
    new tokens of many sequences into one row (B = 1) and its cache keeps them apart.
    logits_rows (R,) int: compute logits only for these columns -> (B, R, V). Inference needs
    the next-token logits of a sequence's last column only, and the (T, C) @ (C, V) head over a
    whole prompt is wasted work (V = 1024 is 5x C = 192 for the teacher: a big share of a prefill).
    caches: pass a dict to collect everything backward() needs (training).
    """
    B, T = ids.shape
    positions = np.arange(start_pos, start_pos + T) if positions is None else np.asarray(positions)
    if caches is None:  # inference: the table may be quantized
        x = embed(params[embedding_name(config)], ids)  # (B, T, C)
    else:
        x, c = ops.embedding_forward(ids, params[embedding_name(config)])  # (B, T, C)
    if config.family == "gpt2":
        x = x + params["transformer.wpe.weight"][positions]  # learned absolute positions
    if caches is not None:
        caches["embed"] = c
        caches["ids"] = ids
        caches["layers"] = []
    for i in range(config.n_layer):
        layer_cache = {} if caches is not None else None
        x = block_forward(x, params, config, i, positions, kv_cache, layer_cache)
        if caches is not None:
            caches["layers"].append(layer_cache)
    if logits_rows is not None:
        if caches is not None:
            raise ValueError("logits_rows is for inference; training (caches given) needs every column")
        x = x[:, logits_rows]  # (B, R, C)
    x, c = _norm_forward(x, params, config, final_norm_name(config))
    head = params[head_name(config)]  # (V, C)
    if caches is not None:
        caches["final_norm"] = c
        caches["head_in"] = x
    return head_product(head, x)  # (B, T, V)


# --------------------------------------------------------------------------------------------
# backward


def _norm_backward(dout, cache, config, name, grads):
    if config.family == "gpt2":
        dx, dw, db = ops.layernorm_backward(dout, cache)
        grads[name + ".bias"] = db
    else:
        dx, dw = ops.rmsnorm_backward(dout, cache)
    grads[name + ".weight"] = dw
    return dx


def _linear_backward(dout, caches, config, name, grads):
    dx, dw, db = ops.linear_backward(dout, caches[name])
    grads[name + ".weight"] = dw.T if config.family == "gpt2" else dw  # back to Conv1D's (K, N)
    if db is not None:
        grads[name + ".bias"] = db
    return dx


def block_backward(dx, caches, config, i, grads):
    """Gradient of block_forward: dx (B, T, C) -> dx (B, T, C); fills grads with this block's."""
    names = layer_names(config, i)
    B, T, C = dx.shape
    H, G, D = config.n_head, config.n_kv_head, config.head_dim

    # --- MLP (the residual passes dx straight through, plus the branch's gradient) ---
    da = _linear_backward(dx, caches, config, names["down"], grads)
    if config.family == "gpt2":
        dh = _linear_backward(ops.gelu_backward(da, caches["act"]), caches, config, names["up"], grads)
    else:
        dgate, dup = ops.swiglu_backward(da, caches["act"])
        dh = _linear_backward(dgate, caches, config, names["gate"], grads)
        dh += _linear_backward(dup, caches, config, names["up"], grads)
    dx = dx + _norm_backward(dh, caches["norm2"], config, names["norm2"], grads)

    # --- attention ---
    dy = _linear_backward(dx, caches, config, names["o"], grads)
    dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
    dq, dk, dv = ops.attention_backward(dy, caches["attn"])
    if config.family == "llama":
        dq = ops.rope_backward(dq, caches["rope"])
        dk = ops.rope_backward(dk, caches["rope"])
    dq = dq.transpose(0, 2, 1, 3).reshape(B, T, H * D)
    dk = dk.transpose(0, 2, 1, 3).reshape(B, T, G * D)
    dv = dv.transpose(0, 2, 1, 3).reshape(B, T, G * D)
    if config.family == "gpt2":
        dh = _linear_backward(np.concatenate([dq, dk, dv], axis=-1), caches, config, names["qkv"], grads)
    else:
        dh = _linear_backward(dq, caches, config, names["q"], grads)
        dh += _linear_backward(dk, caches, config, names["k"], grads)
        dh += _linear_backward(dv, caches, config, names["v"], grads)
    return dx + _norm_backward(dh, caches["norm1"], config, names["norm1"], grads)


def backward(dlogits, params, config, caches):
    """Gradients of every parameter, given dloss/dlogits (B, T, V). Returns name -> array."""
    grads = {}
    head = params[head_name(config)]  # (V, C)
    x = caches["head_in"]  # (B, T, C)
    dhead = dlogits.reshape(-1, dlogits.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (V, C)
    dx = dlogits @ head  # (B, T, C)
    dx = _norm_backward(dx, caches["final_norm"], config, final_norm_name(config), grads)
    for i in reversed(range(config.n_layer)):
        dx = block_backward(dx, caches["layers"][i], config, i, grads)
    if config.family == "gpt2":
        B, T = caches["ids"].shape
        grads["transformer.wpe.weight"] = np.zeros_like(params["transformer.wpe.weight"])
        grads["transformer.wpe.weight"][:T] = dx.sum(axis=0)  # positions 0..T-1 in training
    emb = embedding_name(config)
    grads[emb] = ops.embedding_backward(dx, caches["embed"])
    if config.tie_word_embeddings:
        grads[emb] += dhead  # the tied head's gradient flows into the same matrix
    else:
        grads["lm_head.weight"] = dhead
    return grads


def loss_and_grads(params, config, ids, targets):
    """One training step's arithmetic: mean cross-entropy of targets and its gradients."""
    caches = {}
    logits = forward(params, config, ids, caches=caches)
    loss, ce_cache = ops.cross_entropy_forward(logits, targets)
    dlogits = ops.cross_entropy_backward(1.0, ce_cache)
    return float(loss), backward(dlogits, params, config, caches)


# --------------------------------------------------------------------------------------------
# the Model object: what users hold


class Model:
    """A config, its parameters (Hugging Face names) and, optionally, a tokenizer.

    model.logits(ids) runs the forward pass; model.generate(...) decodes with a contiguous KV cache.
    """

    def __init__(self, config: ModelConfig, params: dict, tokenizer=None):
        expected = param_shapes(config)
        missing = sorted(set(expected) - set(params))
        unexpected = sorted(set(params) - set(expected))
        if missing or unexpected:
            raise ValueError(f"params do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, shape in expected.items():
            if (not isinstance(params[name], np.ndarray) and config.family == "gpt2"
                    and name != embedding_name(config)):
                shape = shape[::-1]  # quantized/sparse weights are always (N, K); GPT-2 stores (K, N)
            if tuple(params[name].shape) != tuple(shape):
                raise ValueError(f"params[{name!r}] has shape {tuple(params[name].shape)}, config needs {tuple(shape)}")
        self.config = config
        self.params = params
        self.tokenizer = tokenizer

    @property
    def dtype(self):
        """The dtype activations are computed in: the embedding's, or float32 if it is quantized."""
        table = self.params[embedding_name(self.config)]
        return table.dtype if isinstance(table, np.ndarray) else np.dtype(np.float32)

    def num_params(self) -> int:
        return self.config.num_params()

    def check_ids(self, ids, name="ids"):
        """ids as an int64 (B, T) array, or a clear error. Returns (array, was_1d)."""
        try:
            arr = np.asarray(ids)
        except ValueError:
            raise ValueError(f"{name} must be a rectangular (T,) or (B, T) array of token ids; "
                             f"rows of different lengths were given") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2):
            raise ValueError(f"{name} must have shape (T,) or (B, T), got {arr.shape}")
        was_1d = arr.ndim == 1
        arr = arr.reshape(1, -1) if was_1d else arr
        if arr.shape[1] == 0:
            raise ValueError(f"{name} is empty: give at least one token")
        if arr.shape[1] > self.config.n_ctx:
            raise ValueError(f"{name} has {arr.shape[1]} tokens but the context length n_ctx is {self.config.n_ctx}")
        bad = (arr < 0) | (arr >= self.config.vocab_size)
        if bad.any():
            raise ValueError(f"{name} has token {int(arr[bad][0])} but vocab_size is {self.config.vocab_size}")
        return arr.astype(np.int64), was_1d

    def logits(self, ids):
        """ids: int (T,) or (B, T) -> float32 logits (T, V) or (B, T, V)."""
        arr, was_1d = self.check_ids(ids)
        out = forward(self.params, self.config, arr).astype(np.float32, copy=False)
        return out[0] if was_1d else out

    def generate(self, ids, max_new_tokens, temperature=0.0, top_k=None, top_p=None, seed=None,
                 stop_token=None):
        """Extend ids (T,) or (B, T) by max_new_tokens sampled tokens; returns prompt + new tokens.

        The prompt runs once (prefill), then each step feeds only the newest token and reads the
        past from a contiguous KV cache. Every row of a batch uses its own generator seeded from
        (seed, row), so a row's tokens do not depend on its neighbours.
        """
        from .kv_cache import ContiguousKVCache
        from .sampling import check_int, check_sampling_args, sample_token

        # types and ranges first, each error naming its argument (True is not a count, "0.5" not a number)
        check_sampling_args(temperature, top_k, top_p, seed)
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, low=0)
        check_int("stop_token", stop_token, low=0, high=self.config.vocab_size, none_ok=True)
        arr, was_1d = self.check_ids(ids)
        B, T = arr.shape
        if T + max_new_tokens > self.config.n_ctx:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                             f"context length n_ctx = {self.config.n_ctx}")
        from .inference import InferenceModel

        fast = InferenceModel(self)  # model.forward's arithmetic, laid out for decoding
        rngs = [np.random.default_rng(None if seed is None else [seed, row]) for row in range(B)]
        cache = ContiguousKVCache(self.config, B, self.dtype, max_len=T + max_new_tokens)
        out = np.zeros((B, T + max_new_tokens), dtype=np.int64)
        out[:, :T] = arr
        logits = fast.forward(arr, np.arange(T), cache, logits_rows=[-1])[:, -1]  # prefill: (B, V)
        done = np.zeros(B, dtype=bool)
        for step in range(max_new_tokens):
            nxt = np.array([sample_token(logits[b], rngs[b], temperature, top_k, top_p) for b in range(B)])
            out[:, T + step] = nxt
            if stop_token is not None:
                done |= nxt == stop_token
                if done.all():
                    out = out[:, : T + step + 1]
                    break
            if step + 1 < max_new_tokens:
                logits = fast.forward(nxt[:, None], np.array([T + step]), cache)[:, -1]  # (B, V)
        return out[0] if was_1d else out

    def chat(self, messages, max_new_tokens: int = 256, temperature=0.0, top_k=None, top_p=None, seed=None,
             stream: bool = False):
        """The assistant's reply to messages [{"role": "system" | "user" | "assistant", "content": str}]:
        rendered with the tokenizer's chat template, generated until the end-of-turn token. Returns the
        text, or with stream=True an iterator of text pieces as they come (tinyinfer/generate.py)."""
        from .generate import chat

        return chat(self, messages, max_new_tokens, temperature, top_k, top_p, seed, stream)

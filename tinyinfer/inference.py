"""The forward pass for inference: model.forward's arithmetic, with the weights laid out for speed.

Lesson: lessons/11-real-model.py (where the time of one token goes)

tinyinfer/model.py's forward is written to be read beside its backward, and it is what training,
Model.logits and the tests use. Decoding calls a forward hundreds of times a second for one token
each, and then small costs add up: on SmolLM2-135M (30 layers) a token makes ~210 weight products,
~60 norms, 60 RoPE rotations, 30 attentions, and builds dozens of parameter names. This class keeps
the same ops, the same KV-cache protocol (kv_cache.attend(layer, q, k, v)) and the same results, and
removes what decode does not need:

  1. fused products: q, k and v read the same normed x, so their weights are stacked into one
     (H*D + 2*G*D, C) matrix, and gate and up into one (2F, C): 4 products a layer instead of 7.
     One product means one call, one pass over x (for quantized weights: x is rounded to Q8_0/Q8_1
     blocks once instead of three times), and a longer row loop for the kernel's threads. A row's
     result does not depend on the rows beside it, so the fused output is the separate outputs,
     stacked.
  2. RoPE angles for every position computed once (ops.rope_tables on demand, kept), not per
     layer per step.
  3. parameters looked up once, into one tuple per layer, instead of by name every step.
  4. dense weights kept transposed and contiguous (model.py: TransposedWeight explains why).
  5. RMSNorm, RoPE and SwiGLU as one compiled loop each over the rows (row_ops.py), not a handful
     of NumPy calls each: for one token those calls cost more than the arithmetic.
  6. a quantized model's tokens into a cache (one sequence's, or the engine's packed step): each
     block is one compiled call (fused_decode.py: the same compiled pieces, no Python between them,
     the same bits).

Only the LLaMA family is restructured; GPT-2 models run model.forward unchanged (they already have
one fused QKV matrix). Weights of different kinds that cannot be stacked (a CSR q_proj next to a
dense k_proj) are kept apart.

    fast = InferenceModel(model)
    logits = fast.forward(ids, positions, kv_cache, logits_rows=[-1])   # as model.forward
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ops, row_ops
from .model import (
    TransposedWeight,
    embed,
    embedding_name,
    final_norm_name,
    forward,
    head_name,
    head_product,
    inference_params,
    layer_names,
    linear_weight,
    matmul,
)

__all__ = ["InferenceModel", "fuse_rows"]


def fuse_rows(weights: list):
    """One weight whose rows are the given weights' rows, stacked; None if they cannot be stacked.

    Dense (N_i, K) arrays stack with np.concatenate. QTensors of one format stack through their
    ggml bytes: a QTensor's rows are whole blocks, row after row, so the stacked bytes are exactly
    the stacked matrix's blocks (no re-rounding). Anything else (sparse, mixed kinds) returns None.
    """
    if all(isinstance(w, np.ndarray) for w in weights):
        return np.concatenate(weights, axis=0)
    from .quant.formats import QTensor

    if all(isinstance(w, QTensor) for w in weights) and len({(w.fmt, w.shape[1]) for w in weights}) == 1:
        rows = sum(w.shape[0] for w in weights)
        data = np.concatenate([np.asarray(w.to_bytes()).reshape(-1) for w in weights])
        return QTensor.from_bytes(data, weights[0].fmt, (rows, weights[0].shape[1]))
    return None


def _for_products(w):
    """A weight as decode multiplies it: dense arrays transposed once (TransposedWeight)."""
    return TransposedWeight(w) if isinstance(w, np.ndarray) else w


@dataclass
class LayerWeights:
    """One LLaMA block, ready to run: norms, fused (or separate) products, sizes."""
    norm1: np.ndarray            # (C,)
    qkv: object | None           # fused (H*D + 2*G*D, C), or None when q, k, v stay apart
    q: object | None             # the three apart (None when fused)
    k: object | None
    v: object | None
    o: object                    # (C, H*D)
    norm2: np.ndarray            # (C,)
    gate_up: object | None       # fused (2F, C), or None
    gate: object | None          # apart (None when fused)
    up: object | None
    down: object                 # (C, F)


class InferenceModel:
    """model.forward for inference, faster (see the module docstring); same inputs, same logits."""

    def __init__(self, model):
        self.model = model
        self.config = config = model.config
        # GPT-2 runs model.forward on these (its QKV is fused already)
        self.params = inference_params(model.params, config) if config.family != "llama" else None
        self.layers: list[LayerWeights] = []
        self._cos = self._sin = np.zeros((0, config.head_dim), np.float32)
        if config.family != "llama":
            return
        p = model.params
        for i in range(config.n_layer):
            names = layer_names(config, i)
            w = {role: linear_weight(p, config, names[role]) for role in ("q", "k", "v", "o", "gate", "up", "down")}
            qkv, gate_up = fuse_rows([w["q"], w["k"], w["v"]]), fuse_rows([w["gate"], w["up"]])
            apart = (lambda role, fused: None if fused is not None else _for_products(w[role]))  # noqa: E731
            self.layers.append(LayerWeights(
                norm1=p[names["norm1"] + ".weight"], norm2=p[names["norm2"] + ".weight"],
                qkv=None if qkv is None else _for_products(qkv),
                q=apart("q", qkv), k=apart("k", qkv), v=apart("v", qkv), o=_for_products(w["o"]),
                gate_up=None if gate_up is None else _for_products(gate_up),
                gate=apart("gate", gate_up), up=apart("up", gate_up), down=_for_products(w["down"])))
        self._plan = False  # fused_decode.DecodePlan, built on the first decode step (None: not applicable)
        self.embedding = p[embedding_name(config)]
        self.final_norm = p[final_norm_name(config) + ".weight"]
        self.head = p[head_name(config)]  # (V, C); a tied head is the embedding table itself

    # ---- RoPE angles, computed once per position --------------------------------------------------

    def rope(self, positions: np.ndarray):
        """cos, sin: (T, D) for positions (T,), from a table that grows to the largest position seen."""
        top = int(positions.max()) + 1
        if top > len(self._cos):
            size = min(max(top, 2 * len(self._cos), 256), max(top, self.config.n_ctx))
            # in the model's dtype, as model.forward makes them (a float64 model stays float64)
            self._cos, self._sin = ops.rope_tables(self.config.head_dim, np.arange(size), self.config.rope_theta,
                                                   self.model.dtype)
        return self._cos[positions], self._sin[positions]

    # ---- the forward ------------------------------------------------------------------------------

    def forward(self, ids, positions, kv_cache, logits_rows=None):
        """ids (B, T) at positions (T,) -> logits (B, T, V) (or (B, R, V) for logits_rows), as model.forward."""
        if self.config.family != "llama":
            return forward(self.params, self.config, ids, kv_cache=kv_cache, positions=np.asarray(positions),
                           logits_rows=logits_rows)
        return head_product(self.head, self.hidden(ids, positions, kv_cache, logits_rows))

    def hidden(self, ids, positions, kv_cache, logits_rows=None):
        """forward without its last product: the final-normed hidden states (B, T, C) (or (B, R, C))
        that the head turns into logits. LLaMA family only."""
        config = self.config
        if config.family != "llama":
            raise ValueError("hidden is for LLaMA-family models; GPT-2 runs model.forward")
        positions = np.asarray(positions)
        ids = np.asarray(ids)
        plan = self._decode_plan(ids, positions, kv_cache)
        if plan is not None:
            x = embed(self.embedding, ids[0])  # (T, C)
            if x.dtype == np.float32:
                x = plan.hidden(np.ascontiguousarray(x), positions, kv_cache)
                if logits_rows is not None:
                    x = x[logits_rows]  # (R, C)
                return row_ops.rmsnorm_rows(np.ascontiguousarray(x), self.final_norm, config.norm_eps)[None]
        return self._hidden_from_embeddings(embed(self.embedding, ids), positions, kv_cache, logits_rows)

    def _decode_plan(self, ids, positions, kv_cache):
        from .fused_decode import DecodePlan

        if kv_cache is None or not DecodePlan.applies(ids, positions, kv_cache):
            return None
        if self._plan is False:
            self._plan = DecodePlan.build(self)
        return self._plan

    def forward_embeddings(self, x, positions, kv_cache, logits_rows=None):
        """The forward from token embeddings x (B, T, C) instead of ids: everything after the lookup
        (lesson 11 nudges x to see how sensitive the logits are). LLaMA family only."""
        if self.config.family != "llama":
            raise ValueError("forward_embeddings is for LLaMA-family models; GPT-2 adds position embeddings")
        return head_product(self.head, self._hidden_from_embeddings(x, positions, kv_cache, logits_rows))

    def _hidden_from_embeddings(self, x, positions, kv_cache, logits_rows=None):
        """Embeddings x (B, T, C) -> final-normed hidden states (B, T, C) or (B, R, C)."""
        config = self.config
        positions = np.asarray(positions)
        B, T, C = x.shape
        H, G, D = config.n_head, config.n_kv_head, config.head_dim
        eps = config.norm_eps
        cos, sin = self.rope(positions)  # (T, D) each
        # Every token-wise step works on (B*T, C) rows: the products take 2-D x as it is (a 3-D x
        # would go through their general input checks at every call, ~5 us each, 120 calls a token).
        x = x.reshape(B * T, C)
        for i, layer in enumerate(self.layers):
            h = row_ops.rmsnorm_rows(x, layer.norm1, eps)  # (B*T, C)
            if layer.qkv is not None:
                qkv = matmul(layer.qkv, h)  # (B*T, H*D + 2*G*D)
                row_ops.rope_heads(qkv, cos, sin, T, H + G, D)  # q's H heads and k's G heads, in place
                q, k, v = qkv[:, :H * D], qkv[:, H * D:(H + G) * D], qkv[:, (H + G) * D:]
                q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
                k = k.reshape(B, T, G, D).transpose(0, 2, 1, 3)  # (B, G, T, D)
            else:
                q, k, v = matmul(layer.q, h), matmul(layer.k, h), matmul(layer.v, h)
                q = ops.rope_forward(q.reshape(B, T, H, D).transpose(0, 2, 1, 3), cos, sin)[0]  # (B, H, T, D)
                k = ops.rope_forward(k.reshape(B, T, G, D).transpose(0, 2, 1, 3), cos, sin)[0]  # (B, G, T, D)
            v = v.reshape(B, T, G, D).transpose(0, 2, 1, 3)  # (B, G, T, D)
            y = kv_cache.attend(i, q, k, v)  # (B, H, T, D)
            x = x + matmul(layer.o, y.transpose(0, 2, 1, 3).reshape(B * T, H * D))
            h = row_ops.rmsnorm_rows(x, layer.norm2, eps)
            if layer.gate_up is not None:
                act = row_ops.swiglu_rows(matmul(layer.gate_up, h))  # (B*T, 2F) -> (B*T, F)
            else:
                act = ops.swiglu_forward(matmul(layer.gate, h), matmul(layer.up, h))[0]
            x = x + matmul(layer.down, act)
        x = x.reshape(B, T, C)
        if logits_rows is not None:
            x = x[:, logits_rows]  # (B, R, C)
        R = x.shape[1]
        return row_ops.rmsnorm_rows(np.ascontiguousarray(x.reshape(B * R, C)), self.final_norm, eps).reshape(B, R, C)

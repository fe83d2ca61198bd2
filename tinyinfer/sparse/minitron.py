"""Minitron-style structured pruning: the teacher cut down in depth and width, to distill into.

Lessons: lessons/06-distillation.py (the student it starts), lessons/05-pruning.py (structured pruning)

Muralidharan et al. (2024, "Compact Language Models via Pruning and Knowledge Distillation") make a
small model by *pruning* a trained one and then distilling the original into it, instead of
distilling into random weights. The pruned model starts with the teacher's features, so the
distillation repairs rather than teaches from nothing.

What goes, ranked by how much each unit is *used* on calibration text (activation importance,
the paper's choice over weight norms; one forward pass of the training-mode model, which keeps
every layer's input):

- depth: greedily drop the block whose removal raises the calibration loss least, until n_layer
  remain (the paper's perplexity-based layer importance);
- attention heads: mean over tokens of the L2 norm of the head's output (o_proj's input, per head).
  Under grouped-query attention the same number of query heads goes from every KV group and every
  K/V head stays (as prune.prune_heads does), so H' stays a multiple of G;
- MLP neurons: mean |silu(gate) * up| of the neuron (down_proj's input);
- embedding channels: mean |x| of every RMSNorm's output, summed over the kept blocks' two norms and
  the final norm. A dropped channel leaves the embedding, every norm gain, the input columns of
  q, k, v, gate, up and the output rows of o and down.

Scores come from the depth-pruned model, so the width ranking sees the blocks that stay. RMSNorm
then averages over fewer channels; nothing compensates for that here (the paper neither), since
distillation retrains the norm gains anyway.

LLaMA family only (GPT-2's fused QKV and LayerNorm biases would need their own bookkeeping).
"""
from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..model import Model, forward, layer_names
from ..ops import log_softmax


def _check(model: Model, n_layer, n_embd, n_head, ffn_hidden):
    cfg = model.config
    if cfg.family != "llama":
        raise ValueError(f"Minitron pruning here handles the llama family, got {cfg.family!r}")
    checks = (("n_layer", n_layer, cfg.n_layer), ("n_embd", n_embd, cfg.n_embd), ("n_head", n_head, cfg.n_head),
              ("ffn_hidden", ffn_hidden, cfg.ffn_hidden))
    for name, value, full in checks:
        if not (isinstance(value, (int, np.integer)) and 1 <= value <= full):
            raise ValueError(f"{name} must be an int between 1 and the model's {full}, got {value!r}")
    if n_head % cfg.n_kv_head:
        raise ValueError(f"n_head = {n_head} must be a multiple of n_kv_head = {cfg.n_kv_head} "
                         "(the same number of query heads is kept in every KV group)")


def calibration_loss(model: Model, calib_ids, batch=8) -> float:
    """Mean next-token cross-entropy of model on calib_ids (W, T + 1): inputs [:, :-1], labels [:, 1:]."""
    total, count = 0.0, 0
    for start in range(0, len(calib_ids), batch):
        rows = np.asarray(calib_ids[start:start + batch], dtype=np.int64)
        logp = log_softmax(model.logits(rows[:, :-1]).astype(np.float64))  # (B, T, V)
        total -= np.take_along_axis(logp, rows[:, 1:, None], axis=-1).sum()
        count += rows[:, 1:].size
    return total / count


def keep_layers(model: Model, layers) -> Model:
    """The model with only the given blocks (in their order), renumbered 0..len-1."""
    cfg = model.config
    layers = [int(i) for i in layers]
    if not layers or len(set(layers)) != len(layers) or not all(0 <= i < cfg.n_layer for i in layers):
        raise ValueError(f"layers must be distinct block indices in [0, {cfg.n_layer}), got {layers}")
    params = {k: v for k, v in model.params.items() if ".layers." not in k}
    for new, old in enumerate(layers):
        prefix_old, prefix_new = f"model.layers.{old}.", f"model.layers.{new}."
        params.update({prefix_new + k[len(prefix_old):]: v for k, v in model.params.items()
                       if k.startswith(prefix_old)})
    config = ModelConfig.from_dict({**cfg.to_dict(), "n_layer": len(layers)})
    return Model(config, params, model.tokenizer)


def layers_to_keep(model: Model, n_layer: int, calib_ids, batch=8, log=None) -> list:
    """Greedy depth pruning: repeatedly drop the block whose removal raises the calibration loss least."""
    kept = list(range(model.config.n_layer))
    while len(kept) > n_layer:
        losses = {i: calibration_loss(keep_layers(model, [j for j in kept if j != i]), calib_ids, batch) for i in kept}
        drop = min(losses, key=losses.get)
        if log:
            log(f"drop block {drop}: calibration loss {losses[drop]:.3f} "
                f"(others {', '.join(f'{i}: {v:.3f}' for i, v in losses.items() if i != drop)})")
        kept.remove(drop)
    return kept


def activation_importance(model: Model, calib_ids, batch=8) -> dict:
    """{"channels": (C,), "heads": (L, H), "neurons": (L, F)} mean activation sizes over calib_ids (W, T)."""
    cfg = model.config
    H, D, C, F, L = cfg.n_head, cfg.head_dim, cfg.n_embd, cfg.ffn_hidden, cfg.n_layer
    channels, heads, neurons, tokens = np.zeros(C), np.zeros((L, H)), np.zeros((L, F)), 0
    ids = np.asarray(calib_ids, dtype=np.int64)
    for start in range(0, len(ids), batch):
        caches = {}
        rows = ids[start:start + batch]
        forward(model.params, cfg, rows, caches=caches)
        tokens += rows.size
        for i, layer in enumerate(caches["layers"]):
            names = layer_names(cfg, i)
            attn_in, mlp_in = layer[names["q"]][0], layer[names["gate"]][0]  # (B, T, C) the two norms' outputs
            channels += np.abs(attn_in).sum(axis=(0, 1)) + np.abs(mlp_in).sum(axis=(0, 1))
            y = layer[names["o"]][0].reshape(*rows.shape, H, D)  # (B, T, H, D) each head's output
            heads[i] += np.linalg.norm(y, axis=-1).sum(axis=(0, 1))
            neurons[i] += np.abs(layer[names["down"]][0]).sum(axis=(0, 1))  # (F,) silu(gate) * up
        channels += np.abs(caches["head_in"]).sum(axis=(0, 1))  # the final norm's output
    return {"channels": channels / tokens, "heads": heads / tokens, "neurons": neurons / tokens}


def _top(scores, k):
    """Sorted indices of the k largest scores (ties: the earlier index stays)."""
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def prune_width(model: Model, importance: dict, n_embd: int, n_head: int, ffn_hidden: int) -> Model:
    """A smaller dense model keeping the most important channels, query heads (per KV group) and neurons."""
    cfg = model.config
    H, G, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    per_group, keep_per_group = H // G, n_head // G
    ch = _top(importance["channels"], n_embd)  # (C',)
    params = {}
    for name, value in model.params.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            params[name] = value[:, ch]  # (V, C')
        elif name.endswith("norm.weight"):
            params[name] = value[ch]
    for i in range(cfg.n_layer):
        names = layer_names(cfg, i)
        heads = np.concatenate([g * per_group + _top(importance["heads"][i, g * per_group:(g + 1) * per_group],
                                                     keep_per_group) for g in range(G)])  # (H',) sorted
        rows = (heads[:, None] * D + np.arange(D)[None, :]).reshape(-1)  # (H'*D,) q features of kept heads
        neurons = _top(importance["neurons"][i], ffn_hidden)  # (F',)
        w = {role: model.params[names[role] + ".weight"] for role in ("q", "k", "v", "o", "gate", "up", "down")}
        params[names["q"] + ".weight"] = w["q"][rows][:, ch]  # (H'*D, C')
        params[names["k"] + ".weight"] = w["k"][:, ch]  # (G*D, C'): every K/V head stays
        params[names["v"] + ".weight"] = w["v"][:, ch]
        params[names["o"] + ".weight"] = w["o"][ch][:, rows]  # (C', H'*D)
        params[names["gate"] + ".weight"] = w["gate"][neurons][:, ch]  # (F', C')
        params[names["up"] + ".weight"] = w["up"][neurons][:, ch]
        params[names["down"] + ".weight"] = w["down"][ch][:, neurons]  # (C', F')
    params = {k: np.ascontiguousarray(v) for k, v in params.items()}
    config = ModelConfig.from_dict({**cfg.to_dict(), "n_embd": n_embd, "n_head": n_head, "ffn_hidden": ffn_hidden,
                                    "head_dim": D})
    return Model(config, params, model.tokenizer)


def minitron_prune(model: Model, calib_ids, n_layer: int, n_embd: int, n_head: int, ffn_hidden: int,
                   batch=8, log=None) -> tuple:
    """The teacher pruned to (n_layer, n_embd, n_head, ffn_hidden), head_dim and KV heads kept.

    calib_ids: (W, T + 1) windows of the training split (labels for the depth ranking are the last
    T tokens). Returns (smaller Model, {"layers": kept block indices, "importance": ...}).
    """
    _check(model, n_layer, n_embd, n_head, ffn_hidden)
    kept = layers_to_keep(model, n_layer, calib_ids, batch, log)
    shallow = keep_layers(model, kept)
    importance = activation_importance(shallow, np.asarray(calib_ids)[:, :-1], batch)
    return prune_width(shallow, importance, n_embd, n_head, ffn_hidden), {"layers": kept, "importance": importance}

"""Pruning: which weights to drop, as 0/1 masks; and structured pruning into smaller dense models.

Lesson: lessons/05-pruning.py

A mask is a float32 array of 0s and 1s shaped like its weight; `w * mask` is the pruned weight.
Masks are name -> array dicts, the form `AdamW.step(..., masks=masks)` takes to keep pruned
weights (and their optimizer state) at zero while the rest train (tinyinfer/train.py).

Unstructured (any single weight may go):

* magnitude_masks / global_magnitude_masks: drop the smallest |w|, exactly like
  torch.nn.utils.prune.l1_unstructured / global_unstructured: amount a float in [0, 1] drops
  k = round(a * n) entries (Python's round: halves to even), an int drops exactly that many; with
  `previous` masks only the still-unpruned entries are counted and ranked, so 0.5 then 0.5 leaves
  25%. Global ranks all given matrices together (a layer of small weights loses more).
* wanda_masks: score |W[n, k]| * ||X[:, k]||_2 (the weight times the size of the input it meets,
  Sun et al. 2023) and drop the lowest k = round(a * K) in *each output row*; the input column norms
  come from calibration text, `collect_input_norms`.
* nm_masks: N:M semi-structured, e.g. 2:4: in every group of M consecutive weights along K keep the
  N largest (the pattern sparse tensor cores accelerate).

Ties: every ranking is `np.argsort(scores, kind="stable")` over the entries in row-major order
(for the global ranking: the matrices concatenated in the dict's order), so among equal scores
the entry that comes *first* is pruned first. torch's topk leaves ties unspecified; ours is
deterministic and platform-independent.

Layouts: the unstructured functions take `weights: name -> (N, K)` arrays; `linear_weights(model)`
gives a model's linear weights that way (GPT-2's Conv1D weights stored (K, N) are transposed) and
`to_param_layout(masks, config)` turns (N, K) masks back into the shapes of model.params, which
AdamW.step and sparsify_model take.

Structured (whole heads or neurons, so the matrices get smaller and stay dense). `amount` is an
int (that many units removed from every layer) or a float in [0, 1] (that fraction of each layer's
units, rounded as count_to_prune does). One-shot: nothing is fine-tuned afterwards.

* prune_mlp_neurons: drop the F-neurons whose down_proj column has the smallest L2 norm; the result
  is a smaller dense Model with ffn_hidden = F - n_remove. ModelConfig has one ffn_hidden for all
  layers, so every layer loses the same number (per-layer widths would need a config change).
* prune_heads: drop the attention heads whose o_proj columns have the smallest L2 norm. Dropping a
  head is exactly zeroing its o_proj columns (its output can no longer reach the residual stream),
  so the pruned model's logits equal those of the same-size model with head_masks applied.
  LLaMA: a genuinely smaller dense Model. Its config keeps head_dim D and sets n_head = H - n_remove
  (ModelConfig.head_dim lets H' * D differ from C); q_proj loses the heads' D-row blocks and
  o_proj their D-column blocks. GQA (n_kv_head G < H): we remove *query heads within groups*, the
  same number from every KV group, and keep every K/V head, so H' stays a multiple of G. Removing
  a whole K/V group would cut H/G query heads at once (coarse), and an uneven removal could never
  become a valid config. The price: k_proj, v_proj and the KV cache do not shrink. Plain
  multi-head attention (G = H): a removed head takes its own K/V head with it, so G' = H' and
  k_proj / v_proj shrink too.
  GPT-2: its config requires H * D = C (HF's GPT2Config has no head_dim), so prune_heads returns
  the same-size model with the heads zeroed (their q, k, v rows and biases in c_attn, their c_proj
  rows); only the zeros show it.
"""
from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..model import Model, forward, layer_names, linear_weight

# --------------------------------------------------------------------------------------------
# counting: torch's rules for `amount`


def count_to_prune(amount, n, name="amount") -> int:
    """k entries to drop out of n: round(amount * n) for a float in [0, 1], or amount itself for an int."""
    if isinstance(amount, (bool, np.bool_)):
        raise TypeError(f"{name} must be a float in [0, 1] or an int count, got {amount!r}")
    if isinstance(amount, (int, np.integer)):
        if not 0 <= amount <= n:
            raise ValueError(f"{name} = {amount} (a count) must be between 0 and the {n} prunable entries")
        return int(amount)
    if isinstance(amount, (float, np.floating)) and 0.0 <= amount <= 1.0:
        return round(float(amount) * n)  # Python's round, halves to even, as torch
    raise ValueError(f"{name} must be a float in [0, 1] (a fraction) or an int (a count), got {amount!r}")


def _drop_lowest(scores, alive, k):
    """0/1 float32 mask like scores: the k lowest scores among alive entries set to 0 (stable ties)."""
    flat_scores = scores.reshape(-1)
    alive_flat = alive.reshape(-1)
    candidates = np.flatnonzero(alive_flat)  # ascending flat indices, so a stable sort keeps that order for ties
    order = np.argsort(flat_scores[candidates], kind="stable")
    mask = alive_flat.astype(np.float32)
    mask[candidates[order[:k]]] = 0.0
    return mask.reshape(scores.shape)


def _alive(w, previous, name):
    if previous is None or name not in previous:
        return np.ones(w.shape, dtype=bool)
    p = np.asarray(previous[name])
    if p.shape != w.shape:
        raise ValueError(f"previous[{name!r}] has shape {p.shape}, the weight has {w.shape}")
    return p != 0


# --------------------------------------------------------------------------------------------
# unstructured: magnitude (per layer and global), Wanda


def magnitude_masks(weights: dict, amount, previous: dict | None = None) -> dict:
    """Per matrix: drop round(amount * alive) of the smallest |w| among the entries still alive."""
    masks = {}
    for name, w in weights.items():
        alive = _alive(w, previous, name)
        k = count_to_prune(amount, int(alive.sum()))
        masks[name] = _drop_lowest(np.abs(w), alive, k)
    return masks


def global_magnitude_masks(weights: dict, amount, previous: dict | None = None) -> dict:
    """All matrices ranked together: drop round(amount * total alive) of the smallest |w| overall."""
    names = list(weights)
    sizes = [weights[n].size for n in names]
    scores = np.concatenate([np.abs(weights[n]).reshape(-1) for n in names])  # (total,)
    alive = np.concatenate([_alive(weights[n], previous, n).reshape(-1) for n in names])
    k = count_to_prune(amount, int(alive.sum()))
    flat = _drop_lowest(scores, alive, k)
    pieces = np.split(flat, np.cumsum(sizes)[:-1])
    return {n: p.reshape(weights[n].shape) for n, p in zip(names, pieces)}


def wanda_masks(weights: dict, input_norms: dict, amount) -> dict:
    """Wanda: score |W| * ||X_col||_2, drop the lowest round(amount * K) of each output row.

    weights: name -> (N, K); input_norms: name -> (K,) L2 norm of each input feature over the
    calibration tokens (collect_input_norms). Every row keeps the same number of weights.
    """
    masks = {}
    for name, w in weights.items():
        if name not in input_norms:
            raise KeyError(f"input_norms has no entry for {name!r}; collect_input_norms gives one per linear layer")
        N, K = w.shape
        norms = np.asarray(input_norms[name], dtype=np.float64)
        if norms.shape != (K,):
            raise ValueError(f"input_norms[{name!r}] must have shape (K,) = ({K},), got {norms.shape}")
        scores = np.abs(w.astype(np.float64)) * norms[None, :]  # (N, K)
        k = count_to_prune(amount, K)
        masks[name] = (~lowest_per_row(scores, k)).astype(np.float32)
    return masks


def lowest_per_row(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, K) bool: the k lowest scores of each row, ties broken as the module's stable argsort
    breaks them (lower column first): the same entries as
    `np.argsort(scores, axis=1, kind="stable")[:, :k]`, found without sorting. np.partition puts
    each row's k-th lowest value in place in linear time; every score below it is in, and of the
    scores equal to it the first columns fill what is left. Wanda's masks of SmolLM2's 210
    matrices (576 and 1536 columns), measured on a 2-core EPYC: 5.4-6.8 s with the sort, 0.8-1.8 s
    this way, the same masks."""
    N, K = scores.shape
    if not 0 <= k <= K:
        raise ValueError(f"k must be between 0 and the row length {K}, got {k}")
    if k == 0:
        return np.zeros((N, K), bool)
    kth = np.partition(scores, k - 1, axis=1)[:, k - 1:k]  # (N, 1) each row's k-th lowest (NaN sorts last)
    nan, nan_kth = np.isnan(scores), np.isnan(kth)
    below = (scores < kth) | (~nan & nan_kth)  # a NaN k-th: every number is below it
    equal = (scores == kth) | (nan & nan_kth)
    room = k - below.sum(axis=1, keepdims=True)  # (N, 1) how many of the equal ones are in
    return below | (equal & (np.cumsum(equal, axis=1) <= room))


def nm_masks(weights: dict, n: int = 2, m: int = 4, input_norms: dict | None = None) -> dict:
    """N:M along K: in each group of m consecutive weights of a row keep the n largest scores.

    Score |w|, or Wanda's |w| * ||X_col|| when input_norms is given. K must be a multiple of m.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 <= n <= m and m >= 1):
        raise ValueError(f"n:m must be ints with 0 <= n <= m, m >= 1, got {n}:{m}")
    masks = {}
    for name, w in weights.items():
        N, K = w.shape
        if K % m:
            raise ValueError(f"{name} has K = {K} input features, not a multiple of m = {m}")
        scores = np.abs(w.astype(np.float64))
        if input_norms is not None:
            scores = scores * np.asarray(input_norms[name], dtype=np.float64)[None, :]
        groups = scores.reshape(N, K // m, m)  # (N, K/m, m)
        drop = np.argsort(groups, axis=-1, kind="stable")[..., : m - n]  # lowest m-n of each group
        mask = np.ones(groups.shape, dtype=np.float32)
        np.put_along_axis(mask, drop, 0.0, axis=-1)
        masks[name] = mask.reshape(N, K)
    return masks


# --------------------------------------------------------------------------------------------
# a model's linear weights, masks in the model's layout, calibration statistics


def linear_weight_names(config) -> list:
    """Parameter names of every linear layer inside the blocks (not the embedding or the head)."""
    roles = ("qkv", "o", "up", "down") if config.family == "gpt2" else ("q", "k", "v", "o", "gate", "up", "down")
    return [layer_names(config, i)[role] + ".weight" for i in range(config.n_layer) for role in roles]


def linear_weights(model: Model) -> dict:
    """name -> (N, K) weight of every block linear layer (GPT-2's (K, N) Conv1D seen transposed)."""
    return {name: linear_weight(model.params, model.config, name[: -len(".weight")])
            for name in linear_weight_names(model.config)}


def to_param_layout(masks: dict, config) -> dict:
    """(N, K) masks -> the shapes model.params stores (GPT-2's Conv1D weights are (K, N))."""
    linear = set(linear_weight_names(config))
    return {name: np.ascontiguousarray(m.T) if config.family == "gpt2" and name in linear else m
            for name, m in masks.items()}


def apply_masks(model: Model, masks: dict) -> Model:
    """A new Model whose params are multiplied by the masks (param layout); the rest shared."""
    params = dict(model.params)
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"masks has {name!r}, which is not a parameter of the model")
        if np.shape(mask) != params[name].shape:
            raise ValueError(f"masks[{name!r}] has shape {np.shape(mask)}, params[{name!r}] has "
                             f"{params[name].shape} (masks must be in the params' layout: to_param_layout)")
        params[name] = (params[name] * mask).astype(params[name].dtype)
    return Model(model.config, params, model.tokenizer)


def collect_input_norms(model: Model, ids, batch_size: int | None = None) -> dict:
    """name -> float32 (K,): ||X[:, k]||_2 of each linear layer's input over all calibration tokens.

    ids: (T,) or (B, T) token ids. Runs the training forward with caches; each linear layer's
    cache holds its input x (B, T, K) under the layer's name (tinyinfer/model.py, ops.linear_forward).
    batch_size: run that many rows of ids at a time (the caches of every layer are held at once,
    so a large calibration set would not fit otherwise); squared norms add up across batches.
    """
    arr, _ = model.check_ids(ids)
    arr = arr.reshape(-1, arr.shape[-1])  # (B, T)
    step = arr.shape[0] if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    names = linear_weight_names(model.config)
    sum_sq = {}
    for start in range(0, arr.shape[0], step):
        caches = {}
        forward(model.params, model.config, arr[start:start + step], caches=caches)
        for name in names:
            i = int(name.split(".")[2])  # "model.layers.3.self_attn..." / "transformer.h.3.attn..."
            x = caches["layers"][i][name[: -len(".weight")]][0]  # (B, T, K)
            x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
            sum_sq[name] = sum_sq.get(name, 0.0) + (x2 * x2).sum(axis=0)  # (K,)
    return {name: np.sqrt(sum_sq[name]).astype(np.float32) for name in names}


# --------------------------------------------------------------------------------------------
# structured: MLP neurons and attention heads (smaller dense models; GPT-2 heads zeroed)


def _lowest_per_layer(scores, n_remove):
    """scores (L, U) -> sorted int arrays of the n_remove lowest units per layer (stable ties)."""
    return [np.sort(np.argsort(s, kind="stable")[:n_remove]) for s in scores]


def neuron_scores(model: Model) -> np.ndarray:
    """(n_layer, F): L2 norm of each MLP neuron's down_proj column (how much it can write)."""
    cfg = model.config
    return np.stack([np.linalg.norm(linear_weight(model.params, cfg, layer_names(cfg, i)["down"]), axis=0)
                     for i in range(cfg.n_layer)])


def neurons_to_remove(config, amount) -> int:
    """How many MLP neurons every layer loses: an int as is, a float as a fraction of F (at least one stays)."""
    F = config.ffn_hidden
    n_remove = count_to_prune(amount, F)
    if n_remove >= F:
        raise ValueError(f"amount = {amount!r} would remove all {F} MLP neurons of a layer; at least one must stay")
    return n_remove


def mlp_neuron_masks(model: Model, amount) -> dict:
    """Masks (param layout) zeroing the lowest-scoring neurons of every layer (see neurons_to_remove)."""
    cfg = model.config
    n_remove = neurons_to_remove(cfg, amount)
    masks = {}
    for i, gone in enumerate(_lowest_per_layer(neuron_scores(model), n_remove)):
        names = layer_names(cfg, i)
        for role in ("up", "gate", "down"):
            if role not in names:
                continue
            shape = (cfg.n_embd, cfg.ffn_hidden) if role == "down" else (cfg.ffn_hidden, cfg.n_embd)  # (N, K)
            mask = np.ones(shape, np.float32)
            if role == "down":
                mask[:, gone] = 0  # (C, F): the neurons' output columns
            else:
                mask[gone, :] = 0  # (F, C): the neurons' input rows
            masks[names[role] + ".weight"] = mask
            if cfg.family == "gpt2" and role == "up":
                bias = np.ones(cfg.ffn_hidden, np.float32)
                bias[gone] = 0
                masks[names[role] + ".bias"] = bias
    return to_param_layout(masks, cfg)


def prune_mlp_neurons(model: Model, amount) -> Model:
    """A smaller dense Model: n_remove MLP neurons fewer in every layer (ffn_hidden - n_remove).

    Its logits equal those of the full model with mlp_neuron_masks applied.
    """
    cfg = model.config
    n_remove = neurons_to_remove(cfg, amount)
    new_cfg = ModelConfig.from_dict({**cfg.to_dict(), "ffn_hidden": cfg.ffn_hidden - n_remove})
    params = dict(model.params)
    gpt2 = cfg.family == "gpt2"
    for i, gone in enumerate(_lowest_per_layer(neuron_scores(model), n_remove)):
        keep = np.setdiff1d(np.arange(cfg.ffn_hidden), gone)  # (F',) sorted: neurons stay in order
        names = layer_names(cfg, i)
        for role in ("up", "gate"):
            if role in names:  # (F, C) in HF Linear; GPT-2's c_fc is (C, F)
                name = names[role] + ".weight"
                params[name] = np.ascontiguousarray(params[name][:, keep] if gpt2 else params[name][keep])
        if gpt2:
            params[names["up"] + ".bias"] = params[names["up"] + ".bias"][keep].copy()
        down = names["down"] + ".weight"  # (C, F) in HF Linear; GPT-2's c_proj is (F, C)
        params[down] = np.ascontiguousarray(params[down][keep] if gpt2 else params[down][:, keep])
    return Model(new_cfg, params, model.tokenizer)


def head_scores(model: Model) -> np.ndarray:
    """(n_layer, H): L2 norm of each head's o_proj columns (how much the head can write)."""
    cfg = model.config
    H, D, C = cfg.n_head, cfg.head_dim, cfg.n_embd
    return np.stack([np.linalg.norm(linear_weight(model.params, cfg, layer_names(cfg, i)["o"]).reshape(C, H, D),
                                    axis=(0, 2)) for i in range(cfg.n_layer)])


def heads_to_remove(config, amount) -> int:
    """How many query heads every layer loses: an int as is, a float as a fraction of H.

    Under GQA the count is per KV group (round(amount * H/G) from each of the G groups), so an int
    must be a multiple of G. At least one head (per group) must stay.
    """
    H, G = config.n_head, config.n_kv_head
    per_group = H // G
    if G < H and isinstance(amount, (float, np.floating)):
        n_remove = G * count_to_prune(amount, per_group)  # the same fraction of every group
    else:
        n_remove = count_to_prune(amount, H)
    if G < H and n_remove % G:
        raise ValueError(f"amount = {amount!r} heads must be a multiple of n_kv_head = {G} "
                         f"(the same number from each of the {G} KV groups of {per_group} heads)")
    if n_remove >= H:
        raise ValueError(f"amount = {amount!r} would remove all {H // G if G < H else H} heads "
                         f"{'of each KV group' if G < H else 'of a layer'}; at least one must stay")
    return n_remove


def heads_removed(model: Model, amount) -> list:
    """Per layer, the sorted indices of the query heads to remove (lowest head_scores; GQA: per group)."""
    cfg = model.config
    H, G = cfg.n_head, cfg.n_kv_head
    n_remove, per_group = heads_to_remove(cfg, amount), H // G
    scores = head_scores(model)  # (L, H)
    if G == H:
        return _lowest_per_layer(scores, n_remove)
    # the lowest n_remove/G query heads inside each group; K/V heads stay
    return [np.sort(np.concatenate([g * per_group + np.argsort(s[g * per_group:(g + 1) * per_group],
                                                               kind="stable")[: n_remove // G]
                                    for g in range(G)])) for s in scores]


def head_masks(model: Model, amount) -> dict:
    """Masks (param layout) zeroing the removed query heads of every layer (see heads_removed)."""
    cfg = model.config
    H, G, D, C = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_embd
    masks = {}
    for i, gone in enumerate(heads_removed(model, amount)):
        names = layer_names(cfg, i)
        out_rows = np.ones((H, D), np.float32)  # one flag per output feature of q (and k, v under MHA)
        out_rows[gone] = 0
        out_rows = out_rows.reshape(H * D)
        o_mask = np.ones((C, H * D), np.float32) * out_rows[None, :]  # (C, H*D): the heads' columns
        if cfg.family == "gpt2":  # fused c_attn (N = 3C): the head's q, k and v rows; and its biases
            qkv_rows = np.tile(out_rows, 3)  # (3C,)
            masks[names["qkv"] + ".weight"] = np.ones((3 * C, C), np.float32) * qkv_rows[:, None]
            masks[names["qkv"] + ".bias"] = qkv_rows.copy()
        else:
            masks[names["q"] + ".weight"] = np.ones((H * D, C), np.float32) * out_rows[:, None]
            if G == H:  # plain multi-head: the head's own k and v go too
                masks[names["k"] + ".weight"] = masks[names["q"] + ".weight"].copy()
                masks[names["v"] + ".weight"] = masks[names["q"] + ".weight"].copy()
        masks[names["o"] + ".weight"] = o_mask
    return to_param_layout(masks, cfg)


def prune_heads(model: Model, amount) -> Model:
    """Remove `amount` query heads per layer (an int, or a float fraction of H; see heads_to_remove).

    LLaMA: a smaller dense Model (n_head - n_remove heads of the same head_dim; under MHA also
    n_kv_head - n_remove). GPT-2: the same-size model with the heads zeroed, because its config
    requires n_head * head_dim = n_embd. Either way the logits equal
    `apply_masks(model, head_masks(model, amount))`'s. See the module docstring for GQA.
    """
    cfg = model.config
    if cfg.family == "gpt2":
        return apply_masks(model, head_masks(model, amount))
    H, G, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    removed = heads_removed(model, amount)
    n_remove = len(removed[0]) if removed else 0
    new_cfg = ModelConfig.from_dict({**cfg.to_dict(), "n_head": H - n_remove,
                                     "n_kv_head": G - n_remove if G == H else G})
    params = dict(model.params)
    for i, gone in enumerate(removed):
        keep = np.setdiff1d(np.arange(H), gone)  # (H',) sorted: heads (and their KV groups) stay in order
        rows = (keep[:, None] * D + np.arange(D)[None, :]).reshape(-1)  # (H'*D,) features of kept heads
        names = layer_names(cfg, i)
        q, o = names["q"] + ".weight", names["o"] + ".weight"
        params[q] = np.ascontiguousarray(params[q][rows])  # (H*D, C) -> (H'*D, C)
        params[o] = np.ascontiguousarray(params[o][:, rows])  # (C, H*D) -> (C, H'*D)
        if G == H:  # plain multi-head: head h reads K/V head h, which goes with it
            for role in ("k", "v"):
                name = names[role] + ".weight"
                params[name] = np.ascontiguousarray(params[name][rows])  # (G*D, C) -> (G'*D, C)
    return Model(new_cfg, params, model.tokenizer)

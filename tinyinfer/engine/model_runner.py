"""ModelRunner: turn a scheduled batch into one packed forward pass, and sample.

Lesson: lessons/08-serving.py

The model runs through tinyinfer/inference.py's InferenceModel.forward(ids, positions, kv_cache):
model.forward's arithmetic with the weights laid out for inference (q/k/v and gate/up fused into
one product each, dense weights transposed), so any weight type the model accepts (dense,
quantized as a GGUF file stores it, sparse) works here, and a step computes what Model.generate
computes. Attention goes through the paged cache (paged_attention.py), by default with the
batch-invariant kernel: a request's logits are then the same bits alone or in any batch.
"""
from __future__ import annotations

import numpy as np

from ..inference import InferenceModel
from ..sampling import sample_token
from .paged_attention import PackedStep, PagedKVCache
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, attention: str = "rows", fast=None):
        self.model = model
        # the weights laid out for inference once: fused products, transposed dense weights
        self.fast = InferenceModel(model) if fast is None else fast
        self.block_size = block_size
        self.kv_cache = PagedKVCache(model.config, num_blocks, block_size, model.dtype, attention)

    def prepare(self, seqs: list[Sequence], num_new_tokens: list[int]):
        """-> ids (1, T), positions (T,), PackedStep: the new tokens of all seqs, end to end."""
        P = self.block_size
        ids, positions, slots, block_tables, context_lens = [], [], [], [], []
        for seq, n in zip(seqs, num_new_tokens):
            start = seq.num_computed_tokens  # its first token without keys/values
            pos = np.arange(start, start + n)  # (n,)
            table = np.asarray(seq.block_table, dtype=np.int64)  # (nb,)
            ids.append(seq.token_ids[start:start + n])
            positions.append(pos)
            slots.append(table[pos // P] * P + pos % P)  # (n,) where each new token's k/v goes
            block_tables.append(table)
            context_lens.append(start + n)
        query_start = np.concatenate([[0], np.cumsum(num_new_tokens)])  # (S+1,)
        positions = np.concatenate(positions)  # (T,)
        step = PackedStep(slot_mapping=np.concatenate(slots), query_start=query_start,
                          context_lens=np.array(context_lens), block_tables=block_tables, positions=positions)
        ids = np.array([t for chunk in ids for t in chunk], dtype=np.int64)[None, :]  # (1, T)
        return ids, positions, step

    def forward(self, seqs: list[Sequence], num_new_tokens: list[int], all_columns: bool = False):
        """Feed each seq its next num_new_tokens in one packed pass -> logits (S, V) of each
        sequence's last fed column (the only ones that predict a token), or, with all_columns,
        of every packed column (T, V) (tests compare those with a full recompute)."""
        ids, positions, step = self.prepare(seqs, num_new_tokens)
        self.kv_cache.set_step(step)
        last = None if all_columns else step.query_start[1:] - 1  # (S,)
        logits = self.fast.forward(ids, positions, self.kv_cache, logits_rows=last)
        return logits[0]  # (S, V) or (T, V)

    def run(self, seqs: list[Sequence], num_new_tokens: list[int]) -> list:
        """One step: feed each seq its num_new_tokens; per seq, in order, a token id when its
        chunk reached its last token, None for a prefill chunk that stops short of it, or the
        exception that failed this seq (the caller fails that request alone).

        A failure in the packed forward does not say which request caused it: all of them share
        every matrix product. So the members are run again one at a time, and only those that
        fail alone fail. Re-running is safe: a step writes keys and values only into slots of its
        own new tokens, in blocks no other table shares (shared prefix blocks are full and never
        written), so the second pass overwrites whatever the failed one left half-written. It
        costs one forward per member, only in the step that failed; bisecting would cost fewer
        forwards when one request is poisoned, at the price of a recursion a reader must follow.
        """
        try:
            logits = self.forward(seqs, num_new_tokens)  # (S, V)
        except Exception as err:
            failure = err
        else:
            return [self.sample(seq, n, row) for seq, n, row in zip(seqs, num_new_tokens, logits)]
        if len(seqs) == 1:
            return [failure]
        # outside the except block, so a member's own error is not chained to the batch's
        return [self.run([seq], [n])[0] for seq, n in zip(seqs, num_new_tokens)]

    @staticmethod
    def sample(seq: Sequence, n: int, row: np.ndarray):
        """seq's next token from its logits row (V,), None mid-prompt, or the sampler's exception."""
        if seq.num_computed_tokens + n < seq.num_tokens:
            return None  # a middle chunk of a long prompt: nothing to sample yet
        p = seq.params
        try:
            return sample_token(row, seq.rng, p.temperature, p.top_k, p.top_p)
        except Exception as err:  # NaN logits, say: this request's problem, not the batch's
            return err

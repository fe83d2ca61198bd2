"""Batch invariance, measured: does a request's output depend on what else shares its steps?

Lesson: lessons/08-serving.py (section 8)

Two measurements, for either attention of the engine (tinyinfer/engine/paged_attention.py:
"rows", the batch-invariant kernel of tinyinfer/invariant_attention.py, or "numpy", BLAS):

* logit_drift: the logits of one sequence's next token computed alone and computed in one decode
  step with other sequences of other lengths: the largest absolute difference, and whether the
  argmax moved. Zero for "rows" by construction; rounding-sized for "numpy" on a float model; larger on
  a model whose products round activations to 8 bits, which turn a last-bit difference into a
  different integer now and then.
* greedy_agreement: each prompt's greedy tokens through the engine alone, batched with the other
  prompts, with its prompt fed in small chunks, and with a cache so small that requests are
  preempted and recomputed: how many of them equal the alone run, token for token.
"""
from __future__ import annotations

import numpy as np

__all__ = ["logit_drift", "greedy_agreement", "quantized_like_gguf"]


def quantized_like_gguf(model, fmt: str = "q8_0"):
    """The model with every product quantized as SmolLM2's GGUF file is: the linear layers in `fmt`,
    the tied embedding / head in Q8_0 (a float head would be a BLAS product of its own)."""
    from ..model import Model, embedding_name
    from ..quant import quantize
    from ..quant.model import quantize_model

    q = quantize_model(model, fmt)
    params = dict(q.params)
    name = embedding_name(model.config)
    if isinstance(params[name], np.ndarray) and model.config.tie_word_embeddings:
        params[name] = quantize(params[name], "q8_0")
    return Model(q.config, params, q.tokenizer)


def _engine(model, attention, **kwargs):
    from ..engine import LLM

    return LLM(model, enable_prefix_caching=False, attention=attention, **kwargs)


def logit_drift(model, prompts: list, attention: str, steps: int = 16) -> dict:
    """prompts[0]'s logits over `steps` decode steps, decoded alone vs in steps shared with the others.

    Each prompt is prefilled on its own first (a prefill's attention has the same shapes alone or
    packed with others). Then every step feeds each sequence one token (prompts[0] is fed its own
    alone-run greedy tokens in both runs, so the two runs see the same text): the steps in which
    the BLAS way pads all sequences to the longest and multiplies them together.
    -> steps whose logits were the same bits, the largest difference, steps whose argmax moved."""
    from ..engine import SamplingParams
    from ..engine.sequence import Sequence

    def decode_logits(batch, forced=None):
        longest = max(map(len, batch)) + steps + 2
        llm = _engine(model, attention, max_num_seqs=len(batch), max_num_batched_tokens=longest,
                      max_model_len=longest)
        runner, manager = llm.model_runner, llm.block_manager
        seqs = [Sequence(str(i), p, SamplingParams(), llm.block_size, 0.0) for i, p in enumerate(batch)]
        rows = []
        for seq in seqs:  # prefill, one sequence at a time
            manager.append(seq, seq.num_tokens)
            logits = runner.forward([seq], [seq.num_tokens])[0]
            if seq is seqs[0]:
                rows.append(logits)
            seq.num_computed_tokens = seq.num_tokens
            seq.append_token(int(logits.argmax()) if forced is None or seq is not seqs[0] else forced[0], 0.0)
        for step in range(steps):
            for seq in seqs:
                manager.append(seq, 1)
            logits = runner.forward(seqs, [1] * len(seqs))  # (S, V)
            rows.append(logits[0])
            for seq, row in zip(seqs, logits):
                seq.num_computed_tokens += 1
                nxt = int(row.argmax()) if forced is None or seq is not seqs[0] else forced[step + 1]
                seq.append_token(nxt, 0.0)
        return np.array(rows[1:]), seqs[0].output_token_ids  # (steps, V): the decode steps' logits

    alone, tokens = decode_logits(prompts[:1])
    together, _ = decode_logits(prompts, forced=tokens)
    diff = np.abs(alone - together).max(axis=-1)  # (steps,)
    return {"attention": attention, "steps": steps, "same_bits_steps": int((diff == 0).sum()),
            "max_abs_diff": float(diff.max()),
            "argmax_moved_steps": int((alone.argmax(-1) != together.argmax(-1)).sum())}


def greedy_agreement(model, prompts: list, new_tokens: int, attention: str, chunk: int = 7) -> dict:
    """Greedy tokens alone / batched / chunked / preempted: how many prompts agree with alone."""
    from ..engine import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    longest = max(map(len, prompts)) + new_tokens
    alone = [_engine(model, attention, max_model_len=longest).generate(p, params)[0].token_ids for p in prompts]
    runs = {"batched": dict(max_model_len=longest),
            "chunked": dict(max_model_len=longest, max_num_batched_tokens=chunk)}
    block = 16
    need = -(-longest // block)
    runs["preempted"] = dict(max_model_len=longest, block_size=block, num_blocks=need + need // 2)
    out = {"attention": attention, "prompts": len(prompts), "new_tokens": new_tokens}
    for name, kwargs in runs.items():
        llm = _engine(model, attention, max_num_seqs=len(prompts), **kwargs)
        outs = llm.generate(prompts, params)
        out[name] = sum(o.token_ids == a for o, a in zip(outs, alone))
        if name == "preempted":
            out["preemptions"] = sum(o.metrics["num_preemptions"] for o in outs)
    return out

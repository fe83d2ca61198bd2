"""Generating text one token at a time, as a stream, and chatting with an instruction-tuned model.

Lessons: lessons/01-transformer.py (the loop), lessons/11-real-model.py (a chat)

    for piece in stream_text(model, ids, max_new_tokens=64):   # text as it is decoded
        print(piece, end="", flush=True)
    reply = chat(model, [{"role": "user", "content": "Hi!"}])   # -> str

The loop is the one every LLM runs: the prompt once through the model (prefill), then one token
at a time, each step feeding only the newest token and reading the past from a KV cache
(tinyinfer/kv_cache.py). It stops at max_new_tokens or at a stop token: the tokenizer's
end-of-generation ids (for a chat model, the end-of-turn token such as "<|im_end|>").

Text is streamed with an incremental UTF-8 decoder: a token may end halfway through a character
(an emoji is four bytes, often two tokens), and printing its bytes alone would show "�". The
decoder holds the incomplete bytes back until the next token completes them.

The model runs through tinyinfer/inference.py (fused products, RoPE table, weights transposed for
decode): pass an InferenceModel you keep to avoid preparing one per call.
"""
from __future__ import annotations

import codecs
from typing import Iterator

import numpy as np

from .inference import InferenceModel
from .kv_cache import ContiguousKVCache
from .sampling import check_int, check_sampling_args, sample_token

__all__ = ["stream_tokens", "stream_text", "decode_stream", "chat", "chat_prompt_ids"]


def _fast(model) -> InferenceModel:
    return model if isinstance(model, InferenceModel) else InferenceModel(model)


def stream_tokens(model, ids, max_new_tokens: int, temperature=0.0, top_k=None, top_p=None, seed=None,
                  stop_ids=()) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids for the prompt ids (T,); a stop id ends the stream
    (it is yielded, so the caller sees why it stopped). model: a Model or an InferenceModel.
    The arguments are checked when it is called, before the first token is asked for."""
    fast = _fast(model)
    check_sampling_args(temperature, top_k, top_p, seed)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, low=0)
    arr, _ = fast.model.check_ids(ids)
    if arr.shape[0] != 1:
        raise ValueError(f"ids must be one sequence (T,) to stream, got shape {arr.shape}")
    T = arr.shape[1]
    if T + max_new_tokens > fast.config.n_ctx:
        raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context "
                         f"length n_ctx = {fast.config.n_ctx}")
    rng = np.random.default_rng(None if seed is None else [seed, 0])
    sample = (lambda logits: sample_token(logits, rng, temperature, top_k, top_p))  # noqa: E731
    return _decode_loop(fast, arr, max_new_tokens, sample, frozenset(int(i) for i in stop_ids))


def _decode_loop(fast: InferenceModel, arr, max_new_tokens: int, sample, stop_ids) -> Iterator[int]:
    """Prefill arr (1, T), then one token a step: the loop of every LLM."""
    T = arr.shape[1]
    if max_new_tokens == 0:
        return
    cache = ContiguousKVCache(fast.config, 1, fast.model.dtype, max_len=T + max_new_tokens)
    logits = fast.forward(arr, np.arange(T), cache, logits_rows=[-1])[0, -1]  # prefill: (V,)
    for step in range(max_new_tokens):
        token = sample(logits)
        yield token
        if token in stop_ids or step + 1 == max_new_tokens:
            return
        logits = fast.forward(np.array([[token]]), np.array([T + step]), cache)[0, -1]  # (V,)


def stream_text(model, ids, max_new_tokens: int, tokenizer=None, stop_ids=None, **sampling) -> Iterator[str]:
    """Text pieces as tokens arrive (stop tokens are not shown); sampling: temperature, top_k, top_p, seed."""
    fast = _fast(model)
    tokenizer = tokenizer if tokenizer is not None else fast.model.tokenizer
    if tokenizer is None:
        raise ValueError("the model has no tokenizer: stream_tokens gives ids, stream_text needs text")
    stop_ids = tokenizer.stop_ids if stop_ids is None else frozenset(stop_ids)
    tokens = stream_tokens(fast, ids, max_new_tokens, stop_ids=stop_ids, **sampling)  # checks now
    return decode_stream(tokens, tokenizer, stop_ids)


def decode_stream(tokens, tokenizer, stop_ids=frozenset()) -> Iterator[str]:
    """Text pieces for a stream of token ids, up to the first stop id (not shown); a character split
    across tokens comes out whole, once its last byte has arrived."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        if token in stop_ids:
            break
        piece = utf8.decode(tokenizer.decode_bytes([token]))
        if piece:
            yield piece
    tail = utf8.decode(b"", final=True)  # bytes of a character the last token left unfinished
    if tail:
        yield tail


def chat_prompt_ids(tokenizer, messages) -> list[int]:
    """The conversation rendered with the model's chat template, encoded with special tokens whole."""
    if tokenizer is None:
        raise ValueError("the model has no tokenizer, so it cannot chat")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the model's tokenizer has no chat template (it is not an instruction-tuned "
                         "chat model); use generate() to continue text instead")
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return tokenizer.encode(prompt, special=True)


def chat(model, messages, max_new_tokens: int = 256, temperature=0.0, top_k=None, top_p=None, seed=None,
         stream: bool = False):
    """The assistant's reply to messages ([{"role", "content"}, ...]): a str, or with stream=True an
    iterator of text pieces as they are generated. Stops at the end-of-turn token."""
    fast = _fast(model)
    ids = chat_prompt_ids(fast.model.tokenizer, messages)
    pieces = stream_text(fast, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return pieces if stream else "".join(pieces)

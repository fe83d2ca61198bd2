"""ModelConfig: every size and switch of a tinyinfer transformer, in one dataclass.

Lesson: lessons/01-transformer.py

Shape legend, used in comments throughout tinyinfer:

    B  batch size                 T  time (sequence length)
    C  channels (n_embd)          H  attention heads (n_head)
    G  key/value heads (n_kv_head; G < H is grouped-query attention)
    D  head dimension (C // H)    V  vocabulary size
    F  feed-forward hidden size   K  input features of a linear layer
    N  output features of a linear layer

Two families share one code path (tinyinfer/model.py):

    gpt2   LayerNorm, learned positions, GELU (tanh), fused QKV with biases, tied head
    llama  RMSNorm, rotary positions (RoPE), SwiGLU, grouped-query attention, optional tied head

A config usually comes from a file, and a file can declare anything. So every size is checked
against a limit (tinyinfer/limits.py: far above real models, far below what would hang a loader)
and the two scalars that could turn logits into NaN (norm_eps, rope_theta) against a range,
before anything is built from them.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from .limits import MODEL_LIMITS, NORM_EPS_RANGE, ROPE_THETA_RANGE, LimitError, check_limit

FAMILIES = ("gpt2", "llama")


@dataclass
class ModelConfig:
    family: str = "llama"          # "gpt2" or "llama"
    vocab_size: int = 1024         # V
    n_layer: int = 4               # transformer blocks
    n_embd: int = 128              # C
    n_head: int = 4                # H
    n_kv_head: int | None = None   # G; None means G = H (plain multi-head attention)
    n_ctx: int = 256               # the longest sequence the model accepts (positions / RoPE table)
    ffn_hidden: int | None = None  # F; None means 4*C for gpt2 and the LLaMA rule for llama
    norm_eps: float = 1e-5         # epsilon inside LayerNorm / RMSNorm
    rope_theta: float = 10000.0    # RoPE base frequency (llama only)
    tie_word_embeddings: bool = True  # output head shares the token embedding matrix
    head_dim: int | None = None    # D; None means C // H. LLaMA may differ (e.g. after pruning heads)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"config.family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "n_ctx"):
            _check_size(name, getattr(self, name))
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        _check_size("n_kv_head", self.n_kv_head)
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"config.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            self.head_dim = self.n_embd // self.n_head
        _check_size("head_dim", self.head_dim)
        if self.family == "gpt2" and self.head_dim * self.n_head != self.n_embd:
            raise ValueError(f"config.head_dim must be n_embd / n_head = {self.n_embd // self.n_head} for gpt2, "
                             f"got {self.head_dim}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"config.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.family == "gpt2" and self.n_kv_head != self.n_head:
            raise ValueError("config.n_kv_head must equal n_head for gpt2 (GPT-2 has no grouped-query attention)")
        if self.family == "gpt2" and not self.tie_word_embeddings:
            raise ValueError("config.tie_word_embeddings must be True for gpt2 (its head is the embedding)")
        if self.ffn_hidden is None:
            self.ffn_hidden = 4 * self.n_embd if self.family == "gpt2" else llama_ffn_hidden(self.n_embd)
        _check_size("ffn_hidden", self.ffn_hidden)
        if self.family == "llama" and self.head_dim % 2:
            raise ValueError(f"head dim = {self.head_dim} must be even for RoPE")
        _check_scalar("norm_eps", self.norm_eps, NORM_EPS_RANGE)
        _check_scalar("rope_theta", self.rope_theta, ROPE_THETA_RANGE)
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"config.tie_word_embeddings must be True or False, got {self.tie_word_embeddings!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config has unknown fields {sorted(unknown)}; known fields are {sorted(known)}")
        return cls(**d)

    def num_params(self) -> int:
        """Parameters counted once (a tied head is not counted twice)."""
        C, F, V, L = self.n_embd, self.ffn_hidden, self.vocab_size, self.n_layer
        kv = self.n_kv_head * self.head_dim
        if self.family == "gpt2":
            block = 2 * 2 * C + C * 3 * C + 3 * C + C * C + C + C * F + F + F * C + C
            return V * C + self.n_ctx * C + L * block + 2 * C
        qo = self.n_head * self.head_dim  # H*D, which equals C unless head_dim was set apart
        block = 2 * C + C * qo + 2 * C * kv + qo * C + 3 * C * F
        head = 0 if self.tie_word_embeddings else V * C
        return V * C + L * block + C + head


def _check_size(name: str, value) -> None:
    """A positive int no larger than its limit in tinyinfer/limits.py (bool is not a size)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config.{name} must be a positive int, got {value!r}")
    limit, why = MODEL_LIMITS[name]
    check_limit(f"config.{name}", value, limit, why)


def _check_scalar(name: str, value, bounds: tuple) -> None:
    """A finite real number within bounds (inclusive); NumPy scalars count, bool does not."""
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"config.{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise LimitError(f"config.{name} = {value!r} is outside [{low:g}, {high:g}]; a value outside it "
                         f"makes NaN logits or no sense (see tinyinfer/limits.py)")


def llama_ffn_hidden(n_embd: int, multiple_of: int = 32) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4C (so the three matrices cost what GPT-2's two do), rounded up."""
    hidden = int(2 * 4 * n_embd / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)

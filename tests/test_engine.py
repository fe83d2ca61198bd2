"""The engine (tinyinfer/engine/): paged attention equals a full recompute, and a request's tokens
never depend on what else is in the batch, how its prompt was chunked, whether it was preempted
or whether its prefix came from the cache."""
import re
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinyinfer
from conftest import ROOT, small_model
from tinyinfer.engine import LLM, LLMEngine, RequestError, SamplingParams
from tinyinfer.engine.llm import DEFAULT_KV_CACHE_BYTES, kv_block_bytes
from tinyinfer.engine.block_manager import BlockManager
from tinyinfer.engine.detokenizer import StopMatcher, TextStream
from tinyinfer.engine.model_runner import ModelRunner
from tinyinfer.model import forward
from tinyinfer.engine.sequence import Sequence


@pytest.fixture(scope="module")
def model64():
    return small_model("llama", dtype=np.float64, seed=3, n_ctx=48)


@pytest.fixture(scope="module")
def tiny():
    return tinyinfer.load(f"{ROOT}/models/tiny")


def prompts(n, vocab=37, seed=0, lo=1, hi=20):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(lo, hi))).tolist() for _ in range(n)]


def greedy_reference(model, ids, max_tokens):
    return model.generate(ids, max_tokens)[len(ids):].tolist()


# ---- paged attention -------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["rows", "numpy"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_paged_logits_equal_full_recompute(family, attention):
    """Two sequences fed in uneven packed chunks through scattered blocks give the same logits as
    running each whole sequence through the model without any cache (both attention kernels)."""
    model = small_model(family, dtype=np.float64, seed=1, n_ctx=40)
    block_size, num_blocks = 4, 24
    runner = ModelRunner(model, num_blocks, block_size, attention)
    manager = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
    rng = np.random.default_rng(0)
    manager.free_block_ids = type(manager.free_block_ids)(rng.permutation(num_blocks).tolist())  # non-adjacent
    seqs = [Sequence(str(i), ids, SamplingParams(), block_size, 0.0)
            for i, ids in enumerate([rng.integers(0, 37, 29).tolist(), rng.integers(0, 37, 17).tolist()])]
    # (T, V) each, no cache, float64 (model.logits would round to float32)
    full = [forward(model.params, model.config, np.array([seq.token_ids]))[0] for seq in seqs]
    chunks = [[5, 1, 9, 3, 1, 10], [7, 7, 1, 2]]  # tokens fed per step, per sequence
    for step in range(6):
        batch = [(seq, c[step]) for seq, c in zip(seqs, chunks) if step < len(c)]
        for seq, n in batch:
            manager.append(seq, n)
        ns = [n for _, n in batch]
        snapshot = [(b.copy(), v.copy()) for b, v in zip(runner.kv_cache.key_cache, runner.kv_cache.value_cache)]
        last = runner.forward([s for s, _ in batch], ns)  # (S, V): what the engine samples from
        for layer, (b, v) in enumerate(snapshot):  # undo the step's cache writes, then feed it again
            runner.kv_cache.key_cache[layer][:], runner.kv_cache.value_cache[layer][:] = b, v
        logits = runner.forward([s for s, _ in batch], ns, all_columns=True)  # (T, V)
        query_start = np.concatenate([[0], np.cumsum(ns)])
        np.testing.assert_allclose(last, logits[query_start[1:] - 1], rtol=1e-12, atol=1e-12)
        for (seq, n), a in zip(batch, query_start):
            start = seq.num_computed_tokens
            np.testing.assert_allclose(logits[a:a + n], full[int(seq.request_id)][start:start + n],
                                       rtol=1e-10, atol=1e-10)
            seq.num_computed_tokens += n


@pytest.mark.parametrize("attention", ["rows", "numpy"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_decode_attention_equals_full_recompute(family, attention):
    """Several sequences of different lengths decoding together (the numpy way's batched path),
    mixed with one still prefilling (its per-sequence path), give a full recompute's logits; so
    does the kernel, which treats every row alike."""
    model = small_model(family, dtype=np.float64, seed=2, n_ctx=40)
    block_size, num_blocks = 4, 40
    runner = ModelRunner(model, num_blocks, block_size, attention)
    manager = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
    rng = np.random.default_rng(1)
    manager.free_block_ids = type(manager.free_block_ids)(rng.permutation(num_blocks).tolist())
    lengths = [13, 6, 22, 9]
    seqs = [Sequence(str(i), rng.integers(0, 37, n).tolist(), SamplingParams(), block_size, 0.0)
            for i, n in enumerate(lengths)]
    full = [forward(model.params, model.config, np.array([seq.token_ids]))[0] for seq in seqs]
    # prefill all but the last 4 tokens of the first three; the fourth prefills in chunks meanwhile
    plan = [[n - 4, 1, 1, 1, 1] for n in lengths[:3]] + [[2, 2, 2, 2, 1]]
    for step in range(5):
        batch = [(seq, p[step]) for seq, p in zip(seqs, plan)]
        for seq, n in batch:
            manager.append(seq, n)
        ns = [n for _, n in batch]
        last = runner.forward([s for s, _ in batch], ns)  # (S, V)
        if attention == "numpy":
            assert len(runner.kv_cache.decode_seqs) == [0, 3, 3, 3, 4][step]  # batched ones
        for (seq, n), row in zip(batch, last):
            seq.num_computed_tokens += n
            np.testing.assert_allclose(row, full[int(seq.request_id)][seq.num_computed_tokens - 1],
                                       rtol=1e-10, atol=1e-10)


# ---- greedy tokens do not depend on the batch ---------------------------------------------------


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "csr 50%", "heads removed"])
def test_engine_runs_quantized_and_sparse_models(tiny, kind):
    """The engine calls the model only through forward(), so a QTensor, CSR or shrunk model works
    as it is: a batch's greedy tokens equal Model.generate's on the same weights."""
    from tinyinfer.quant.model import quantize_model
    from tinyinfer.sparse import CSRMatrix
    from tinyinfer.sparse.model import prune_model, sparsify_model

    if kind.startswith("q"):
        model = quantize_model(tiny, kind)
    elif kind == "csr 50%":
        model = sparsify_model(prune_model(tiny, "magnitude", 0.5), min_sparsity=0.4)
        assert any(isinstance(w, CSRMatrix) for w in model.params.values())
    else:
        model = prune_model(tiny, "heads", 0.5)
    texts = ["def f(x):", "import os\n", "class A:\n    def"]
    outs = LLM(model, block_size=16, max_num_batched_tokens=64).generate(
        texts, SamplingParams(max_tokens=12, ignore_eos=True))
    for text, out in zip(texts, outs):
        assert out.token_ids == greedy_reference(model, tiny.tokenizer.encode(text), 12)


def test_engine_greedy_matches_model_generate_on_tiny_model(tiny):
    texts = ["def f(x):", "class A:", "import os\n", "def main():\n    return"]
    llm = LLM(tiny, block_size=16, max_num_batched_tokens=64)
    outs = llm.generate(texts, SamplingParams(max_tokens=24, ignore_eos=True))
    for text, out in zip(texts, outs):
        ids = tiny.tokenizer.encode(text)
        assert out.prompt_token_ids == ids
        assert out.token_ids == greedy_reference(tiny, ids, 24)
        assert out.text == tiny.tokenizer.decode(out.token_ids)
        assert out.finish_reason == "length"


@pytest.mark.parametrize("engine_args", [
    dict(),                                                   # roomy: everything in one batch
    dict(max_num_batched_tokens=5),                           # chunked prefill, few decodes per step
    dict(max_num_seqs=2),                                     # requests queue for a seat
    dict(block_size=2, num_blocks=14, max_num_batched_tokens=8),  # tight memory: preemption
    dict(block_size=4, enable_prefix_caching=False),
], ids=["roomy", "chunked", "two-seats", "preempt", "no-prefix-cache"])
def test_greedy_tokens_same_alone_and_in_any_batch(model64, engine_args):
    ps = prompts(6, seed=1)
    ps.append(ps[0][:5] + [1, 2, 3])  # shares a prefix with the first prompt
    params = SamplingParams(max_tokens=10)
    llm = LLM(model64, **engine_args)
    outs = llm.generate(ps, params)
    for p, out in zip(ps, outs):
        assert out.token_ids == greedy_reference(model64, p, 10)
        assert out.finish_reason == "length"
    if "num_blocks" in engine_args:
        assert sum(o.metrics["num_preemptions"] for o in outs) > 0, "the tight cache should preempt"
    assert not llm.block_manager.used_block_ids  # nothing leaked


def test_prefix_cache_on_and_off_give_the_same_tokens(model64):
    base = prompts(1, seed=2, lo=17, hi=18)[0]
    ps = [base + [i] for i in range(4)]  # four prompts with a 17-token common prefix
    on = LLM(model64, block_size=4, enable_prefix_caching=True, max_num_seqs=1)
    off = LLM(model64, block_size=4, enable_prefix_caching=False, max_num_seqs=1)
    outs_on = on.generate(ps, SamplingParams(max_tokens=6))
    outs_off = off.generate(ps, SamplingParams(max_tokens=6))
    assert [o.token_ids for o in outs_on] == [o.token_ids for o in outs_off]
    # one seat: the first runs alone, the other three hit its 4 full prefix blocks
    assert [o.metrics["num_cached_prompt_tokens"] for o in outs_on] == [0, 16, 16, 16]
    assert all(o.metrics["num_cached_prompt_tokens"] == 0 for o in outs_off)


def test_seeded_sampling_same_alone_and_batched(model64):
    ps = prompts(5, seed=4)
    params = [SamplingParams(max_tokens=8, temperature=0.9, top_k=k, top_p=p, seed=10 + i)
              for i, (k, p) in enumerate([(None, None), (5, None), (None, 0.8), (8, 0.9), (None, None)])]
    alone = [LLM(model64).generate([p], [sp])[0].token_ids for p, sp in zip(ps, params)]
    batched = LLM(model64, max_num_batched_tokens=7, block_size=2).generate(ps, params)
    assert [o.token_ids for o in batched] == alone
    assert alone[0] != LLM(model64).generate([ps[0]], SamplingParams(max_tokens=8, temperature=0.9,
                                                                     seed=99))[0].token_ids


# ---- stopping ---------------------------------------------------------------------------------


def test_stop_string_cuts_the_text(tiny):
    llm = LLM(tiny)
    full = llm.generate("def f(x):", SamplingParams(max_tokens=12, ignore_eos=True))[0]
    assert '"""' in full.text
    out = llm.generate("def f(x):", SamplingParams(max_tokens=12, stop=['"""', "zzz"]))[0]
    assert out.finish_reason == "stop"
    assert out.text == full.text[:full.text.index('"""')]
    assert out.token_ids == full.token_ids[:len(out.token_ids)]  # ends with the token completing it
    assert '"""' in tiny.tokenizer.decode(out.token_ids)


def test_stop_tokens_eos_and_max_tokens(model64):
    p = prompts(1, seed=11)[0]
    ref = greedy_reference(model64, p, 10)
    first = next(i for i, t in enumerate(ref) if ref.index(t) == i >= 2)  # a new token, not the first
    stop_id = ref[first]
    llm = LLM(model64)
    out = llm.generate(p, SamplingParams(max_tokens=10, stop_token_ids=[stop_id]))[0]
    assert out.token_ids == ref[:first + 1] and out.finish_reason == "stop"
    llm.scheduler.stop_ids = frozenset([stop_id])  # pretend stop_id ends a generation, as <|im_end|> does
    assert llm.generate(p, SamplingParams(max_tokens=10))[0].token_ids == ref[:first + 1]
    out = llm.generate(p, SamplingParams(max_tokens=10, ignore_eos=True))[0]
    assert out.token_ids == ref and out.finish_reason == "length"
    out = llm.generate(p, SamplingParams(max_tokens=1, ignore_eos=True))[0]
    assert out.token_ids == ref[:1] and out.finish_reason == "length" and out.metrics["tpot"] is None


def test_too_long_requests_are_refused_clearly(model64):
    llm = LLM(model64, block_size=4, num_blocks=5)
    with pytest.raises(ValueError, match="n_ctx"):
        llm.add_request(list(range(30)), SamplingParams(max_tokens=19))  # 49 > n_ctx = 48
    with pytest.raises(ValueError, match="num_blocks"):
        llm.add_request(list(range(15)), SamplingParams(max_tokens=7))  # 21 positions > 5 blocks of 4
    llm.add_request(list(range(15)), SamplingParams(max_tokens=6))  # 20 positions fit exactly
    with pytest.raises(ValueError, match="vocab_size"):
        llm.add_request([1, 2, 99])
    with pytest.raises(ValueError, match="empty"):
        llm.add_request([])
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="num_blocks"):  # a bad prompt in a batch queues nothing
        llm.generate([[1, 2], list(range(25))], SamplingParams(max_tokens=4))
    assert len(llm.scheduler.waiting) == 1


# ---- prefix cache -----------------------------------------------------------------------------


def test_multi_turn_chat_reuses_earlier_turns(tiny):
    llm = LLM(tiny, block_size=16)
    tok = tiny.tokenizer
    turn1 = tok.encode("def add(a, b):\n    return a + b\n\n\n"
                       "def sub(a, b):\n    return a - b\n\n\ndef mul(a, b):\n")
    out1 = llm.generate(turn1, SamplingParams(max_tokens=20, ignore_eos=True))[0]
    assert out1.metrics["num_cached_prompt_tokens"] == 0
    turn2 = turn1 + out1.token_ids + tok.encode("\n\ndef div(a, b):\n")
    out2 = llm.generate(turn2, SamplingParams(max_tokens=8, ignore_eos=True))[0]
    computed1 = len(turn1) + 20 - 1  # turn 1's last token was sampled, never fed
    assert out2.metrics["num_cached_prompt_tokens"] == computed1 // 16 * 16 > 0
    assert out2.token_ids == greedy_reference(tiny, turn2, 8)


@pytest.mark.parametrize("n", [8, 9])
def test_prefix_hit_leaves_at_least_one_token_to_compute(model64, n):
    llm = LLM(model64, block_size=4)
    p = prompts(1, seed=6, lo=n, hi=n + 1)[0]
    first = llm.generate(p, SamplingParams(max_tokens=3))[0]
    again = llm.generate(p, SamplingParams(max_tokens=3))[0]
    # n = 8: both blocks are cached, but the hit stops at the last full block within n-1 tokens
    assert again.metrics["num_cached_prompt_tokens"] == (n - 1) // 4 * 4
    assert again.token_ids == first.token_ids


def test_lru_pool_evicts_and_reuses_blocks(model64):
    llm = LLM(model64, block_size=4, num_blocks=6)
    bm = llm.block_manager
    a, b = prompts(2, seed=7, lo=13, hi=14)
    llm.generate(a, SamplingParams(max_tokens=5))
    assert len(bm.cached_block_ids) == 4 and not bm.used_block_ids  # 17 computed -> 4 full blocks
    llm.generate(b, SamplingParams(max_tokens=5))  # needs 5 blocks: evicts a's oldest-released ones
    hit = llm.generate(b, SamplingParams(max_tokens=5))[0].metrics["num_cached_prompt_tokens"]
    assert hit == 12
    assert sorted(set(bm.free_block_ids) | set(bm.cached_block_ids)) == list(range(6))


# ---- streaming and abort ----------------------------------------------------------------------


def test_streaming_steps_add_up_to_the_output(tiny):
    llm = LLM(tiny, max_num_batched_tokens=8)
    params = SamplingParams(max_tokens=20, stop=["about"])
    ids = [llm.add_request("def f(x):", params), llm.add_request("class A:", SamplingParams(max_tokens=10))]
    tokens, texts, finals = {i: [] for i in ids}, {i: "" for i in ids}, {}
    while llm.has_unfinished_requests():
        for out in llm.step():
            tokens[out.request_id] += out.new_token_ids
            texts[out.request_id] += out.new_text
            if out.finished:
                finals[out.request_id] = out.output
    for i in ids:
        assert finals[i].token_ids == tokens[i]
        assert finals[i].text == texts[i]
    assert finals[ids[0]].finish_reason == "stop" and "about" not in finals[ids[0]].text
    m = finals[ids[1]].metrics
    assert m["tpot"] == pytest.approx((m["e2e"] - m["ttft"]) / 9)
    assert 0 <= m["ttft"] <= m["e2e"]


def test_abort_frees_blocks(model64):
    llm = LLM(model64, block_size=4, num_blocks=20, enable_prefix_caching=False)
    bm = llm.block_manager
    a = llm.add_request(prompts(1, seed=8, lo=10, hi=11)[0], SamplingParams(max_tokens=20))
    b = llm.add_request(prompts(1, seed=9, lo=10, hi=11)[0], SamplingParams(max_tokens=20))
    llm.step(), llm.step()
    assert len(bm.used_block_ids) == 6  # 11 computed positions each -> 3 blocks each
    assert llm.abort(a) and not llm.abort(a) and not llm.abort("nope")
    assert len(bm.used_block_ids) == 3 and len(bm.free_block_ids) == 17
    outs = []
    while llm.has_unfinished_requests():
        outs += llm.step()
    assert {o.request_id for o in outs} == {b}
    assert len(bm.free_block_ids) == 20


def test_hash_collision_is_not_a_hit(model64, monkeypatch):
    """Equal hashes are not enough: a hit also compares the block's tokens."""
    llm = LLM(model64, block_size=4)
    a, b = prompts(2, seed=10, lo=9, hi=10)
    monkeypatch.setattr(Sequence, "block_hash", lambda self, i: 12345 + i)  # every prefix collides
    first = llm.generate(a, SamplingParams(max_tokens=3))[0]
    assert llm.block_manager.hash_to_block_id  # a's blocks registered under the colliding hashes
    out = llm.generate(b, SamplingParams(max_tokens=3))[0]
    assert out.metrics["num_cached_prompt_tokens"] == 0
    assert out.token_ids == greedy_reference(model64, b, 3)
    assert llm.generate(a, SamplingParams(max_tokens=3))[0].metrics["num_cached_prompt_tokens"] == 8
    assert first.token_ids == greedy_reference(model64, a, 3)


def test_chunked_prefill_spreads_a_long_prompt_over_steps(model64):
    llm = LLM(model64, block_size=4, max_num_batched_tokens=5)
    p = prompts(1, seed=12, lo=19, hi=20)[0]
    llm.add_request(p, SamplingParams(max_tokens=3))
    fed, got = [], []
    while llm.has_unfinished_requests():
        outs = llm.step()
        fed.append(llm.last_schedule.num_new_tokens[0])
        got.append(bool(outs))
    assert fed == [5, 5, 5, 4, 1, 1]  # 19 prompt tokens in chunks of <= 5, then one per decode step
    assert got == [False, False, False, True, True, True]



def test_prefill_time_budget_shortens_chunks_only_while_others_generate(model64):
    """With max_prefill_seconds, a long prompt that arrives while another request is generating is
    fed in chunks of what fits in that time (at a fixed, known seconds per token here), and the
    generating request still gets its token every step; alone, a prompt takes whole chunks. The
    tokens are the same as without the budget."""
    long_prompt, short_prompt = prompts(1, seed=12, lo=30, hi=31)[0], [3, 1, 4]
    llm = LLM(model64, block_size=4, max_num_batched_tokens=16, max_prefill_seconds=0.004)
    scheduler = llm.scheduler
    scheduler.observe = lambda num_tokens, seconds: None  # keep the rate fixed, not measured
    scheduler.seconds_per_token = 0.001  # 0.004 s -> 4 prompt tokens a step
    first = llm.add_request(long_prompt, SamplingParams(max_tokens=2))
    llm.step()
    assert llm.last_schedule.num_new_tokens == [16]  # nobody generating: a whole chunk
    while llm.has_unfinished_requests():
        llm.step()
    short = llm.add_request(short_prompt, SamplingParams(max_tokens=12))
    llm.step()  # its prompt, alone
    out = {}
    second = llm.add_request(long_prompt, SamplingParams(max_tokens=2))
    fed = []
    while llm.has_unfinished_requests():
        for o in llm.step():
            if o.finished:
                out[o.request_id] = o.output.token_ids
        fed.append(dict(zip([s.request_id for s in llm.last_schedule.seqs], llm.last_schedule.num_new_tokens)))
    while_generating = [f[second] for f in fed if second in f and short in f]
    assert while_generating and all(n <= 4 for n in while_generating)
    assert all(f.get(short) == 1 for f in fed if short in f)  # the generating request never waits
    plain = LLM(model64, block_size=4, max_num_batched_tokens=16).generate(
        [long_prompt, short_prompt], [SamplingParams(max_tokens=2), SamplingParams(max_tokens=12)])
    assert out[second] == plain[0].token_ids and out[short] == plain[1].token_ids
    assert first != second


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "0.05"])
def test_max_prefill_seconds_is_checked_by_name(model64, value):
    with pytest.raises(ValueError, match="max_prefill_seconds"):
        LLM(model64, max_prefill_seconds=value)

def test_generate_accepts_prompt_forms(tiny):
    llm = LLM(tiny)
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    ids = tiny.tokenizer.encode("def f(x):")
    expected = llm.generate("def f(x):", params)[0].token_ids
    assert llm.generate(ids, params)[0].token_ids == expected
    assert llm.generate(np.array(ids), params)[0].token_ids == expected
    outs = llm.generate(["def f(x):", ids], [params, SamplingParams(max_tokens=2, ignore_eos=True)])
    assert [o.token_ids for o in outs] == [expected, expected[:2]]
    assert [o.request_id for o in outs] == sorted({o.request_id for o in outs}, key=int)
    with pytest.raises(ValueError, match="SamplingParams"):
        llm.generate(["a", "b"], [params])


# ---- one request's failure is its own -----------------------------------------------------------


class PoisonRunner(ModelRunner):
    """A ModelRunner in which chosen requests fail: in the packed forward (every member is then a
    suspect) or in their own sampling."""

    def __init__(self, *args, forward_poison=(), sample_poison=()):
        super().__init__(*args)
        self.forward_poison, self.sample_poison = set(forward_poison), set(sample_poison)
        self.forward_calls = []  # the request ids of every forward, failed or not

    def forward(self, seqs, num_new_tokens, all_columns=False):
        self.forward_calls.append([s.request_id for s in seqs])
        if any(s.request_id in self.forward_poison for s in seqs):
            raise FloatingPointError("poisoned forward")
        return super().forward(seqs, num_new_tokens, all_columns)

    def sample(self, seq, n, row):
        if seq.request_id in self.sample_poison and seq.num_computed_tokens + n >= seq.num_tokens:
            row = np.full_like(row, np.nan)  # what a broken model would hand the sampler
        return super().sample(seq, n, row)


def poisoned_llm(model, **poison):
    llm = LLM(model, block_size=4, max_num_batched_tokens=16)
    llm.model_runner = PoisonRunner(model, llm.num_blocks, llm.block_size, **poison)
    return llm


@pytest.mark.parametrize("where", ["forward", "sample"])
def test_a_failing_request_ends_alone(model64, where):
    ps = prompts(5, seed=13)
    params = SamplingParams(max_tokens=8)
    llm = poisoned_llm(model64, **{f"{where}_poison": {"2"}})
    with pytest.raises(RequestError) as info:
        llm.generate(ps, params)
    outs = info.value.outputs
    assert [o.finish_reason for o in outs] == ["length", "length", "error", "length", "length"]
    assert isinstance(outs[2].error, FloatingPointError if where == "forward" else ValueError)
    assert isinstance(info.value.__cause__, type(outs[2].error))
    for i in (0, 1, 3, 4):
        assert outs[i].token_ids == greedy_reference(model64, ps[i], 8)
    if where == "forward":  # the batch failed, then each member ran alone once
        assert any(len(call) == 1 for call in llm.model_runner.forward_calls)
    # nothing stuck: every block is back and the same engine serves the next call
    assert not llm.sequences and not llm.has_unfinished_requests() and not llm.block_manager.used_block_ids
    assert llm.block_manager.num_free_blocks == llm.num_blocks
    assert llm.generate(ps[0], params)[0].token_ids == outs[0].token_ids


def test_streaming_step_reports_the_failure(model64):
    llm = poisoned_llm(model64, sample_poison={"bad"})
    llm.add_request(prompts(1, seed=14)[0], SamplingParams(max_tokens=4), request_id="bad")
    llm.add_request(prompts(1, seed=15)[0], SamplingParams(max_tokens=4), request_id="good")
    finals = {}
    while llm.has_unfinished_requests():
        for out in llm.step():
            if out.finished:
                finals[out.request_id] = out
    assert finals["bad"].finish_reason == "error" and finals["bad"].new_token_ids == []
    assert "NaN" in str(finals["bad"].output.error)
    assert finals["good"].finish_reason == "length" and len(finals["good"].output.token_ids) == 4


def test_generate_interrupted_leaves_nothing_behind(model64, monkeypatch):
    llm = LLM(model64, block_size=4)
    calls = []

    def step_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return LLM.step(llm, *args, **kwargs)
    monkeypatch.setattr(llm, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(prompts(3, seed=16), SamplingParams(max_tokens=6))
    assert not llm.sequences and not llm.has_unfinished_requests() and not llm.block_manager.used_block_ids


# ---- the Python API names the argument ------------------------------------------------------------


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(max_tokens=True), TypeError, "max_tokens"),
    (dict(max_tokens=2.0), TypeError, "max_tokens"),
    (dict(max_tokens=0), ValueError, "max_tokens"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(temperature=True), TypeError, "temperature"),
    (dict(temperature=1e-320), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=1.0, top_p="0.5"), TypeError, "top_p"),
    (dict(temperature=1.0, top_p=float("nan")), ValueError, "top_p"),
    (dict(temperature=1.0, top_k=True), TypeError, "top_k"),
    (dict(temperature=1.0, top_k=2.0), TypeError, "top_k"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=True), TypeError, "seed"),
    (dict(seed="7"), TypeError, "seed"),
    (dict(stop=123), TypeError, "stop"),
    (dict(stop=["ok", 5]), TypeError, "stop[1]"),
    (dict(stop=[""]), ValueError, "stop[0]"),
    (dict(stop="\ud800"), ValueError, "stop[0]"),
    (dict(ignore_eos="no"), TypeError, "ignore_eos"),
    (dict(stop_token_ids=5), TypeError, "stop_token_ids"),
    (dict(stop_token_ids=[True]), TypeError, "stop_token_ids[0]"),
    (dict(stop_token_ids=[-1]), ValueError, "stop_token_ids[0]"),
])
def test_sampling_params_refuse_wrong_types_and_ranges(kwargs, error, name):
    with pytest.raises(error, match=re.escape(name)):
        SamplingParams(**kwargs)


def test_sampling_params_accept_numpy_numbers():
    sp = SamplingParams(max_tokens=np.int64(3), temperature=np.float32(0.5), top_k=np.int32(4), seed=np.uint8(1))
    assert sp.max_tokens == 3 and sp.stop is None and sp.stop_token_ids == []


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(max_new_tokens=True), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(temperature=1e-320), ValueError, "temperature"),
    (dict(temperature=1.0, top_p="0.5"), TypeError, "top_p"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=True), TypeError, "seed"),
    (dict(stop_token=99), ValueError, "stop_token"),
    (dict(stop_token="2"), TypeError, "stop_token"),
])
def test_model_generate_names_the_argument(model64, kwargs, error, name):
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(error, match=name):
        model64.generate([1, 2], **kwargs)


def test_engine_checks_name_the_argument(model64):
    llm = LLM(model64, block_size=4)
    with pytest.raises(ValueError, match=r"stop_token_ids\[0\] is 99 but vocab_size is 37"):
        llm.add_request([1, 2], SamplingParams(stop_token_ids=[99]))
    with pytest.raises(TypeError, match="params"):
        llm.add_request([1, 2], {"max_tokens": 2})
    with pytest.raises(TypeError, match="prompts"):
        llm.generate(123)
    for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "num_blocks", "max_model_len"):
        with pytest.raises(TypeError, match=name):
            LLM(model64, **{name: True})
        with pytest.raises(ValueError, match=name):
            LLM(model64, **{name: 0})
    assert not llm.sequences


# ---- the KV cache is sized for what is served -------------------------------------------------------


def config_only(n_ctx, dtype=np.float32):
    """What LLMEngine.size_cache reads of a model, shaped like SmolLM2-135M (30 layers, 3 KV heads
    of 64): its context, KV shape and dtype. No weights, and no config checks: a file may declare
    anything."""
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(n_ctx=n_ctx, n_layer=30, n_kv_head=3, head_dim=64), dtype=dtype)


def test_default_cache_fits_the_budget_not_the_declared_context():
    real = config_only(8192)  # SmolLM2-135M's shape: 720 KiB per block of 16 positions in float32
    block = kv_block_bytes(real.config, 16, 4)
    assert block == 2 * 30 * 3 * 16 * 64 * 4
    num_blocks, max_model_len, budget = LLMEngine.size_cache(real, 16, 16, None, None, None)
    assert num_blocks * block <= budget <= DEFAULT_KV_CACHE_BYTES  # 16 * 8192 positions would be 6 GB
    assert max_model_len == 8192 and num_blocks * 16 + 1 >= max_model_len
    # a small cache asked for explicitly: the longest request shrinks to what it holds
    num_blocks, max_model_len, _ = LLMEngine.size_cache(real, 16, 16, None, None, 100 * block)
    assert (num_blocks, max_model_len) == (100, 1601)
    # max_model_len asked for: max_num_seqs requests of that length, if the budget allows
    num_blocks, max_model_len, _ = LLMEngine.size_cache(real, 16, 4, None, 512, None)
    assert (num_blocks, max_model_len) == (4 * 32, 512)


def test_cache_sizes_that_cannot_be_are_refused_by_name():
    real = config_only(8192)
    with pytest.raises(ValueError, match="num_blocks = 1,000,000 needs .* bytes .* kv_cache_bytes"):
        LLMEngine.size_cache(real, 16, 16, 1_000_000, None, None)
    with pytest.raises(ValueError, match="kv_cache_bytes .* available"):
        LLMEngine.size_cache(real, 16, 16, None, None, 1 << 60)
    with pytest.raises(ValueError, match="max_model_len = 9000 is more than .* n_ctx = 8192"):
        LLMEngine.size_cache(real, 16, 16, None, 9000, None)
    with pytest.raises(ValueError, match="max_model_len = 8192 does not fit"):
        LLMEngine.size_cache(real, 16, 16, 10, 8192, None)
    with pytest.raises(ValueError, match="block_size"):
        LLMEngine.size_cache(real, 1 << 24, 16, None, None, None)


def test_a_huge_declared_context_does_not_size_the_cache():
    """A context of a million positions: LLM() sizes its cache by the memory budget, not by
    max_num_seqs * n_ctx (16M positions here), returns at once and serves."""
    num_blocks, max_model_len, _ = LLMEngine.size_cache(config_only(10**12), 16, 16, None, None, None)
    assert num_blocks * kv_block_bytes(config_only(10**12).config, 16, 4) <= DEFAULT_KV_CACHE_BYTES
    assert max_model_len == num_blocks * 16 + 1
    model = small_model("llama", dtype=np.float64, seed=3, n_ctx=1 << 20)
    t0 = time.perf_counter()
    llm = LLM(model, block_size=16)
    assert time.perf_counter() - t0 < 10  # generous, on a shared machine: it was "never" before
    assert llm.num_blocks * kv_block_bytes(model.config, 16, 8) <= DEFAULT_KV_CACHE_BYTES
    assert llm.num_blocks < 16 * (1 << 20) // 16 and llm.max_model_len == 1 << 20
    ps = prompts(2, seed=17)
    outs = llm.generate(ps, SamplingParams(max_tokens=5))
    assert [o.token_ids for o in outs] == [greedy_reference(model, p, 5) for p in ps]


# ---- stop strings on bytes, streaming text -----------------------------------------------------------

PIECES = [b"a", b"b", b" ", b"ab", "é".encode(), "é".encode()[:1], "é".encode()[1:], "€".encode()[:2],
          "€".encode()[2:], "€".encode(), b"\xff"]


@given(tokens=st.lists(st.sampled_from(PIECES), min_size=1, max_size=14),
       stop=st.lists(st.text(alphabet="ab é€", min_size=1, max_size=4), min_size=1, max_size=4))
def test_stop_matching_on_bytes_equals_searching_the_text(tokens, stop):
    """StopMatcher, which looks only at where a new match can end, stops at the same token and cuts
    the same text as searching the whole decoded text after every token (what the engine did
    before); and TextStream's increments add up to that text."""
    matcher = StopMatcher(stop)
    data, cut, stopped_at = bytearray(), None, None
    for k, token in enumerate(tokens):
        start = len(data)
        data += token
        cut = matcher.find(data, start)
        if cut is not None:
            stopped_at = k
            break
    naive_at = naive_text = None
    for k in range(len(tokens)):
        text = b"".join(tokens[:k + 1]).decode("utf-8", errors="replace")
        found = [i for i in (text.find(s) for s in stop) if i >= 0]
        if found:
            naive_at, naive_text = k, text[:min(found)]
            break
    assert stopped_at == naive_at
    final = data[:cut].decode("utf-8", errors="replace") if cut is not None else data.decode("utf-8", errors="replace")
    if naive_text is not None:
        assert final == naive_text
    stream = TextStream(hold_bytes=matcher.max_len - 1)
    last = stopped_at if stopped_at is not None else len(tokens) - 1  # the last token goes to finish()
    shown = "".join(stream.add(t) for t in tokens[:last]) + stream.finish(final)
    assert shown == final


def test_engine_stops_at_every_end_of_generation_id(tiny):
    """The engine's stop set is the tokenizer's stop_ids (SmolLM2: <|endoftext|>, <|im_end|>,
    <reponame>), or its eos_id when it lists none; ignore_eos turns them all off."""
    from types import SimpleNamespace

    from tinyinfer.engine.llm import end_of_generation_ids

    assert end_of_generation_ids(None) == frozenset()
    assert end_of_generation_ids(SimpleNamespace(stop_ids=frozenset({0, 2, 4}), eos_id=2)) == {0, 2, 4}
    assert end_of_generation_ids(SimpleNamespace(eos_id=7)) == {7}
    llm = LLM(tiny)
    assert llm.stop_ids == tiny.tokenizer.stop_ids and tiny.tokenizer.eos_id in llm.stop_ids
    prompt = tiny.tokenizer.encode("def f(x):")
    ref = llm.generate(prompt, SamplingParams(max_tokens=12, ignore_eos=True))[0].token_ids
    second = ref[3]  # pretend two of the tokens it will generate end a generation
    llm.scheduler.stop_ids = frozenset({second, ref[7]})
    out = llm.generate(prompt, SamplingParams(max_tokens=12))[0]
    assert out.token_ids == ref[:ref.index(second) + 1] and out.finish_reason == "stop"
    assert out.text == tiny.tokenizer.decode(out.token_ids[:-1])  # the stop token is not shown
    assert llm.generate(prompt, SamplingParams(max_tokens=12, ignore_eos=True))[0].token_ids == ref

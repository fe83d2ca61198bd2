"""Batch invariance (tinyinfer/invariant_attention.py): the attention kernel agrees with its NumPy
twin, and a query row's result is the same bits alone, in any batch, in any chunk, under any block
size or thread count; the other operations a row goes through (norms, RoPE, SwiGLU, residual adds,
quantized products, the embedding lookup) are row-invariant too."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer import ops
from tinyinfer.invariant_attention import attention_rows, attention_rows_reference, head_tile, supports

DTYPES = [np.float32, np.float64]


def random_case(rng, dtype, S, G, R, D, P, lengths, shuffle=True):
    """Caches of scattered blocks holding S sequences of the given lengths -> (kc, vc, tables)."""
    nb = [(L - 1) // P + 1 for L in lengths]
    N = sum(nb) + 2  # two blocks nobody owns
    ids = rng.permutation(N) if shuffle else np.arange(N)
    tables = np.full((S, max(nb)), -1, dtype=np.int64)  # -1 padding: must never be read
    at = 0
    for s, n in enumerate(nb):
        tables[s, :n] = ids[at:at + n]
        at += n
    kc = rng.standard_normal((N, G, P, D)).astype(dtype)
    vc = rng.standard_normal((N, G, P, D)).astype(dtype)
    return kc, vc, tables


@st.composite
def cases(draw):
    S = draw(st.integers(1, 4))
    G = draw(st.integers(1, 3))
    R = draw(st.integers(1, 3))
    D = draw(st.sampled_from([1, 3, 8, 17, 32, 64]))
    P = draw(st.sampled_from([1, 2, 5, 16]))
    lengths = draw(st.lists(st.integers(1, 40), min_size=S, max_size=S))
    T = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from(DTYPES))
    return S, G, R, D, P, lengths, T, seed, dtype


def queries(rng, lengths, T, H, D, dtype):
    seq = rng.integers(0, len(lengths), T)
    pos = np.array([rng.integers(0, lengths[s]) for s in seq], dtype=np.int64)
    scale = rng.uniform(0.1, 4.0)  # sharp and flat softmaxes
    return (rng.standard_normal((T, H, D)) * scale).astype(dtype), seq, pos


@settings(deadline=None, max_examples=60)
@given(cases())
def test_kernel_matches_numpy_twin(case):
    S, G, R, D, P, lengths, T, seed, dtype = case
    rng = np.random.default_rng(seed)
    kc, vc, tables = random_case(rng, dtype, S, G, R, D, P, lengths)
    q, seq, pos = queries(rng, lengths, T, G * R, D, dtype)
    fast = attention_rows(q, kc, vc, tables, seq, pos)
    twin = attention_rows_reference(q, kc, vc, tables, seq, pos)
    assert fast.dtype == dtype and fast.shape == q.shape
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(fast, twin, rtol=tol, atol=tol)


@st.composite
def tiled_cases(draw):
    S = draw(st.integers(1, 4))
    G = draw(st.integers(1, 2))
    R = draw(st.sampled_from([1, 2, 3, 4, 6]))
    D = draw(st.sampled_from([16, 48, 64, 128]))
    P = draw(st.sampled_from([1, 3, 16]))
    lengths = draw(st.lists(st.integers(1, 40), min_size=S, max_size=S))
    T = draw(st.integers(1, 9))
    return S, G, R, D, P, lengths, T, draw(st.integers(0, 2**31 - 1))


@settings(deadline=None, max_examples=40)
@given(tiled_cases())
def test_register_tiles_agree_with_the_plain_loops_and_the_twin(case):
    """one_row_tiled (the heads in registers, scores summed as a lane tree) against one_row and the
    NumPy twin: the same math, so they differ by rounding only; serial and parallel the same bits."""
    S, G, R, D, P, lengths, T, seed = case
    assert head_tile(G * R, G, D) is not None
    rng = np.random.default_rng(seed)
    kc, vc, tables = random_case(rng, np.float32, S, G, R, D, P, lengths)
    q, seq, pos = queries(rng, lengths, T, G * R, D, np.float32)
    tiled = attention_rows(q, kc, vc, tables, seq, pos, parallel=False)
    plain = attention_rows(q, kc, vc, tables, seq, pos, parallel=False, tiled=False)
    twin = attention_rows_reference(q, kc, vc, tables, seq, pos)
    np.testing.assert_allclose(tiled, twin, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tiled, plain, rtol=1e-5, atol=1e-5)
    assert np.array_equal(tiled, attention_rows(q, kc, vc, tables, seq, pos, parallel=True))


def test_head_tile_shapes():
    """Which heads get register tiles, and how many query heads a tile holds."""
    tile = head_tile(9, 3, 64)  # SmolLM2: 3 query heads a key/value head, 4 vectors a head
    assert (tile.rows, tile.cols) == (3, 4)
    assert (head_tile(8, 2, 128).rows, head_tile(8, 2, 128).cols) == (2, 8)  # 4 x 8 would not fit
    assert (head_tile(6, 1, 32).rows, head_tile(6, 1, 32).cols) == (3, 2)
    assert head_tile(4, 2, 24) is None  # not a multiple of 16: the plain loops
    assert head_tile(4, 2, 144) is None
    assert head_tile(4, 2, 64, np.float64) is None


def test_kernel_matches_ops_attention_forward():
    """A prompt of T tokens through the kernel = ops.attention_forward's causal attention."""
    rng = np.random.default_rng(0)
    G, R, D, T = 3, 3, 64, 37
    q = rng.standard_normal((1, G * R, T, D))
    k, v = rng.standard_normal((2, 1, G, T, D))
    expected = ops.attention_forward(q, k, v)[0][0].transpose(1, 0, 2)  # (T, H, D)
    got = attention_rows(q[0].transpose(1, 0, 2), k, v, [[0]], np.zeros(T, np.int64), np.arange(T))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@settings(deadline=None, max_examples=40)
@given(cases(), st.integers(0, 2**31 - 1))
def test_a_row_is_the_same_bits_in_any_batch_chunk_layout_or_thread_count(case, seed2):
    """The bitwise property the engine relies on. The same query row computed (a) alone, (b) in a
    batch with other rows in another order, (c) through a cache of another block size (a
    contiguous one: one block per sequence), (d) on one thread or many: equal bits."""
    S, G, R, D, P, lengths, T, seed, dtype = case
    rng = np.random.default_rng(seed)
    kc, vc, tables = random_case(rng, dtype, S, G, R, D, P, lengths)
    q, seq, pos = queries(rng, lengths, T, G * R, D, dtype)
    batch = attention_rows(q, kc, vc, tables, seq, pos, parallel=False)
    threads = attention_rows(q, kc, vc, tables, seq, pos, parallel=True)
    assert np.array_equal(batch, threads)
    order = np.random.default_rng(seed2).permutation(T)
    shuffled = attention_rows(q[order], kc, vc, tables, seq[order], pos[order], parallel=True)
    assert np.array_equal(shuffled, batch[order])
    # the same keys laid out contiguously: sequence s is block s of max(lengths) positions
    Lmax = max(lengths)
    ck = np.zeros((S, G, Lmax, D), dtype)
    cv = np.zeros((S, G, Lmax, D), dtype)
    for s, L in enumerate(lengths):
        for j in range(L):
            b, off = tables[s, j // P], j % P
            ck[s, :, j], cv[s, :, j] = kc[b, :, off], vc[b, :, off]
    contiguous = attention_rows(q, ck, cv, np.arange(S)[:, None], seq, pos)
    assert np.array_equal(contiguous, batch)
    for t in range(T):  # alone, with a padded table of one row
        alone = attention_rows(q[t:t + 1], kc, vc, tables[seq[t]:seq[t] + 1], [0], pos[t:t + 1], parallel=False)
        assert np.array_equal(alone[0], batch[t])


def test_rows_never_read_padding_or_other_sequences():
    """Poison every block a query must not read (padding, other sequences, positions past its own):
    its output stays finite and unchanged."""
    rng = np.random.default_rng(3)
    kc, vc, tables = random_case(rng, np.float32, 3, 2, 2, 8, 4, [5, 13, 9])
    q, seq, pos = queries(rng, [5, 13, 9], 10, 4, 8, np.float32)
    before = attention_rows(q, kc, vc, np.where(tables < 0, 0, tables), seq, pos)
    for t in range(10):
        pk, pv = kc.copy(), vc.copy()
        mine = {(int(tables[seq[t], j // 4]), j % 4) for j in range(pos[t] + 1)}
        for b in range(kc.shape[0]):
            for off in range(4):
                if (b, off) not in mine:
                    pk[b, :, off] = np.nan
                    pv[b, :, off] = np.inf
        out = attention_rows(q[t:t + 1], pk, pv, np.where(tables < 0, 0, tables)[seq[t]:seq[t] + 1], [0], pos[t:t + 1])
        assert np.array_equal(out[0], before[t])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [1, 17, 64])
def test_prefetch_hints_change_nothing(dtype, D):
    """ask_for (the kernel's hint for the next block) on the last block, more positions than a
    block holds, lines that end mid-row: no fault, the cache unchanged."""
    from tinyinfer.invariant_attention import ask_for

    kc = np.random.default_rng(0).standard_normal((3, 2, 5, D)).astype(dtype)
    before = kc.copy()
    for block in range(3):
        for g in range(2):
            ask_for(kc, block, g, 1)
            ask_for(kc, block, g, 1000)
    assert np.array_equal(kc, before)


def test_bad_arguments_are_named():
    kc = np.zeros((4, 2, 4, 8), np.float32)
    q = np.zeros((3, 4, 8), np.float32)
    seq, pos = np.zeros(3, np.int64), np.array([0, 1, 2])
    with pytest.raises(ValueError, match="H must be a multiple of G"):
        attention_rows(np.zeros((3, 3, 8), np.float32), kc, kc, [[0]], seq, pos)
    with pytest.raises(ValueError, match="block_tables has 1 rows"):
        attention_rows(q, kc, kc, [[0]], np.array([0, 1, 0]), pos)
    with pytest.raises(ValueError, match="query_pos reaches 9"):
        attention_rows(q, kc, kc, [[0, 1]], seq, np.array([0, 1, 9]))
    with pytest.raises(ValueError, match="names blocks"):
        attention_rows(q, kc, kc, [[7]], seq, pos)
    with pytest.raises(TypeError, match="float32 or all float64"):
        attention_rows(q, kc.astype(np.float16), kc.astype(np.float16), [[0]], seq, pos)
    assert supports(np.float32, np.float32) and not supports(np.float32, np.float16)


# ---- the rest of a row's path --------------------------------------------------------------------


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 40), st.integers(0, 7), st.integers(0, 2**31 - 1))
def test_norms_rope_swiglu_and_adds_are_row_invariant(n, offset, seed):
    """Each op on a batch of n rows gives, for every row, the bits it gives that row alone; also
    when the batch starts at an odd offset in memory (SIMD loops must not peel by alignment)."""
    rng = np.random.default_rng(seed)
    C, F, H, D = 576, 1536, 9, 64
    x = (rng.standard_normal((1, n, C)) * rng.uniform(0.01, 30)).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    gu = (rng.standard_normal((1, n, 2 * F)) * 3).astype(np.float32)
    qh = rng.standard_normal((1, n, H, D)).astype(np.float32)
    cos, sin = ops.rope_tables(D, rng.integers(0, 4000, n), 1e5, np.float32)
    buf = np.empty(x.size + offset, np.float32)
    shifted = buf[offset:].reshape(x.shape)
    shifted[...] = x

    def ops_on(rows):  # rows: which rows, as a slice
        xs, g = x[:, rows], gu[:, rows]
        return (ops.rmsnorm_forward(xs, w, 1e-5)[0],
                ops.swiglu_forward(g[..., :F], g[..., F:])[0],
                ops.rope_forward(qh[:, rows].transpose(0, 2, 1, 3), cos[rows], sin[rows])[0].transpose(0, 2, 1, 3),
                xs + xs[..., ::-1])

    whole = ops_on(slice(None))
    assert np.array_equal(ops.rmsnorm_forward(shifted, w, 1e-5)[0], whole[0])
    for i in range(n):
        for got, full in zip(ops_on(slice(i, i + 1)), whole):
            assert np.array_equal(got[:, 0], full[:, i])


@pytest.mark.parametrize("fmt", ["q8_0", "q4_1"])
def test_quantized_products_and_lookup_are_row_invariant(fmt):
    """SmolLM2's formats: a row of x @ W.T and a row of the embedding lookup do not depend on the
    other rows (tests/test_quant_kernels.py checks every tile shape; this is the model's shapes)."""
    from tinyinfer.model import embed
    from tinyinfer.quant import quantize

    rng = np.random.default_rng(1)
    w = quantize(rng.standard_normal((96, 576)).astype(np.float32), fmt)
    x = rng.standard_normal((13, 576)).astype(np.float32)
    batch = w.matmul(x)
    for i in range(13):
        assert np.array_equal(w.matmul(x[i:i + 1])[0], batch[i])
        assert np.array_equal(w.matmul(x[i]), batch[i])
    ids = rng.integers(0, 96, (1, 9))
    rows = embed(w, ids)
    assert all(np.array_equal(embed(w, ids[:, i:i + 1])[0, 0], rows[0, i]) for i in range(9))


# ---- the engine, end to end, without SmolLM2 ------------------------------------------------------


def test_engine_is_batch_invariant_on_a_model_quantized_like_smollm2():
    """tinyinfer/bench/invariance.py on the tiny model with every product quantized (head included):
    a sequence's decode logits are the same bits alone and batched, and every prompt's greedy tokens
    are the same alone, batched, chunked and preempted."""
    import tinyinfer
    from conftest import ROOT
    from tinyinfer.bench.invariance import greedy_agreement, logit_drift, quantized_like_gguf

    model = quantized_like_gguf(tinyinfer.load(f"{ROOT}/models/tiny"), "q4_1")
    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, model.config.vocab_size, n).tolist() for n in (23, 57, 9, 40)]
    drift = logit_drift(model, prompts, "rows", steps=6)
    assert drift["same_bits_steps"] == 6 and drift["max_abs_diff"] == 0.0
    agree = greedy_agreement(model, prompts, 16, "rows", chunk=5)
    assert agree["preemptions"] > 0
    assert agree["batched"] == agree["chunked"] == agree["preempted"] == len(prompts)

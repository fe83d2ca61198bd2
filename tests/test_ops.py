"""Every op's backward against central finite differences in float64, over hypothesis shapes."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tinyinfer import ops
from tinyinfer.gradcheck import numerical_grad as numeric_grad


def check(f_forward, backward_grads, inputs, tol=1e-6):
    """f_forward() -> output; probe makes a scalar; compare analytic and numeric gradients."""
    out = f_forward()
    probe = np.random.default_rng(7).standard_normal(np.shape(out))
    scalar = lambda: float(np.sum(f_forward() * probe))  # noqa: E731
    analytic = backward_grads(probe)
    for x, g in zip(inputs, analytic):
        num = numeric_grad(scalar, x)
        assert g.shape == x.shape
        np.testing.assert_allclose(g, num, rtol=tol, atol=tol)


dims = st.integers(1, 5)


def arr(rng, *shape):
    return rng.standard_normal(shape)


@given(B=dims, T=dims, C=st.integers(2, 7), seed=st.integers(0, 1000))
def test_layernorm(B, T, C, seed):
    rng = np.random.default_rng(seed)
    x, w, b = arr(rng, B, T, C), arr(rng, C), arr(rng, C)
    check(lambda: ops.layernorm_forward(x, w, b, 1e-5)[0],
          lambda d: ops.layernorm_backward(d, ops.layernorm_forward(x, w, b, 1e-5)[1]), [x, w, b])


@given(B=dims, T=dims, C=st.integers(1, 7), seed=st.integers(0, 1000))
def test_rmsnorm(B, T, C, seed):
    rng = np.random.default_rng(seed)
    x, w = arr(rng, B, T, C), arr(rng, C)
    check(lambda: ops.rmsnorm_forward(x, w, 1e-5)[0],
          lambda d: ops.rmsnorm_backward(d, ops.rmsnorm_forward(x, w, 1e-5)[1]), [x, w])


@given(M=dims, K=dims, N=dims, bias=st.booleans(), seed=st.integers(0, 1000))
def test_linear(M, K, N, bias, seed):
    rng = np.random.default_rng(seed)
    x, w, b = arr(rng, 2, M, K), arr(rng, N, K), arr(rng, N)
    bb = b if bias else None
    expected = [x, w] + ([b] if bias else [])

    def grads(d):
        dx, dw, db = ops.linear_backward(d, ops.linear_forward(x, w, bb)[1])
        return [dx, dw] + ([db] if bias else [])
    check(lambda: ops.linear_forward(x, w, bb)[0], grads, expected)


@given(n=dims, seed=st.integers(0, 1000))
def test_gelu_and_swiglu(n, seed):
    rng = np.random.default_rng(seed)
    x, g, u = arr(rng, n, 3) * 2, arr(rng, n, 3) * 2, arr(rng, n, 3)
    check(lambda: ops.gelu_forward(x)[0], lambda d: [ops.gelu_backward(d, ops.gelu_forward(x)[1])], [x])
    check(lambda: ops.swiglu_forward(g, u)[0], lambda d: ops.swiglu_backward(d, ops.swiglu_forward(g, u)[1]), [g, u])


@given(T=dims, half=st.integers(1, 4), start=st.integers(0, 50), seed=st.integers(0, 1000))
def test_rope(T, half, start, seed):
    rng = np.random.default_rng(seed)
    D = 2 * half
    x = arr(rng, 2, 3, T, D)
    cos, sin = ops.rope_tables(D, np.arange(start, start + T), 10000.0, np.float64)
    check(lambda: ops.rope_forward(x, cos, sin)[0], lambda d: [ops.rope_backward(d, (cos, sin))], [x])
    # a rotation keeps each pair's length
    y = ops.rope_forward(x, cos, sin)[0]
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1))


@given(B=st.integers(1, 2), G=st.integers(1, 2), R=st.integers(1, 3), T=dims, past=st.integers(0, 3),
       D=st.integers(1, 4), seed=st.integers(0, 1000))
def test_attention(B, G, R, T, past, D, seed):
    rng = np.random.default_rng(seed)
    S = T + past
    q, k, v = arr(rng, B, G * R, T, D), arr(rng, B, G, S, D), arr(rng, B, G, S, D)
    check(lambda: ops.attention_forward(q, k, v)[0],
          lambda d: ops.attention_backward(d, ops.attention_forward(q, k, v)[1]), [q, k, v])


@given(B=st.integers(1, 2), T=dims, seed=st.integers(0, 1000))
def test_attention_is_causal_and_matches_a_loop(B, T, seed):
    """Against the textbook definition, one query at a time, with k/v heads repeated."""
    rng = np.random.default_rng(seed)
    H, G, D = 4, 2, 3
    q, k, v = arr(rng, B, H, T, D), arr(rng, B, G, T, D), arr(rng, B, G, T, D)
    out = ops.attention_forward(q, k, v)[0]
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for t in range(T):
                s = k[b, g, :t + 1] @ q[b, h, t] / np.sqrt(D)
                p = np.exp(s - s.max())
                p /= p.sum()
                np.testing.assert_allclose(out[b, h, t], p @ v[b, g, :t + 1], rtol=1e-10, atol=1e-12)


@given(B=dims, T=dims, V=st.integers(2, 9), seed=st.integers(0, 1000))
def test_cross_entropy(B, T, V, seed):
    rng = np.random.default_rng(seed)
    logits = arr(rng, B, T, V) * 3
    targets = rng.integers(0, V, (B, T))
    loss = lambda: ops.cross_entropy_forward(logits, targets)[0]  # noqa: E731
    analytic = ops.cross_entropy_backward(1.0, ops.cross_entropy_forward(logits, targets)[1])
    np.testing.assert_allclose(analytic, numeric_grad(loss, logits), rtol=1e-6, atol=1e-8)


def test_embedding_accumulates_repeated_tokens():
    wte = np.arange(12.0).reshape(4, 3)
    ids = np.array([[1, 1, 3]])
    out, cache = ops.embedding_forward(ids, wte)
    np.testing.assert_array_equal(out[0, 0], wte[1])
    dwte = ops.embedding_backward(np.ones((1, 3, 3)), cache)
    np.testing.assert_array_equal(dwte, [[0, 0, 0], [2, 2, 2], [0, 0, 0], [1, 1, 1]])

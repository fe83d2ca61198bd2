"""CSRMatrix against dense NumPy (and SciPy's arrays), the Numba kernels against their NumPy twin."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyinfer.sparse import CSRMatrix
from tinyinfer.sparse.csr import csr_matmul_reference

kernels = pytest.importorskip("tinyinfer.sparse.kernels")  # Numba


INDEX_DTYPES = [np.uint16, np.int32, np.int64]


@st.composite
def problems(draw):
    """Awkward shapes (N or K = 0, N = 1, K = 1, odd; B = 1, 2, 3, 8, 16, 17, 40: around and past the
    8-lane vectors and the kernel's 16-column passes), densities from empty (an all-zero matrix) to full, empty rows, zero x."""
    N = draw(st.sampled_from([0, 1, 2, 3, 7, 13, 40]))
    K = draw(st.sampled_from([0, 1, 2, 5, 17, 33]))
    B = draw(st.sampled_from([1, 2, 3, 8, 16, 17, 40]))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    w = rng.standard_normal((N, K)).astype(np.float32)
    w *= rng.random((N, K)) < density  # density 1.0: fully dense
    if draw(st.booleans()) and N:
        w[rng.integers(0, N, size=max(1, N // 3))] = 0  # some empty rows
    x = (rng.standard_normal((B, K)) * draw(st.sampled_from([1e-3, 1.0, 50.0]))).astype(np.float32)
    if draw(st.booleans()):
        x[:] = 0
    return w, x


def tolerance(w, x):
    """|a - b| bound for two float32 sums of the same terms in different orders: 1e-5 * sum |terms|."""
    return 1e-5 * (np.abs(x) @ np.abs(w).T) + 1e-30


@given(problem=problems())
def test_twin_equals_dense_product(problem):
    w, x = problem
    m = CSRMatrix.from_dense(w)
    ref = csr_matmul_reference(m.indptr, m.indices, m.data, w.shape[0], x)
    assert ref.dtype == np.float32 and ref.shape == (x.shape[0], w.shape[0])
    assert np.all(np.abs(ref - x @ w.T) <= tolerance(w, x))


@pytest.mark.parametrize("kernel", kernels.KERNELS)
@pytest.mark.parametrize("parallel", [False, True])
@given(problem=problems(), index_dtype=st.sampled_from(INDEX_DTYPES))
def test_kernels_equal_numpy_twin(kernel, parallel, problem, index_dtype):
    w, x = problem
    m = CSRMatrix.from_dense(w).with_index_dtype(index_dtype)
    N = w.shape[0]
    ref = csr_matmul_reference(m.indptr, m.indices, m.data, N, x)
    for rows in (x, x[:1]):  # the batch kernel and the one-vector kernel
        out = kernels.csr_matmul(m.indptr, m.indices, m.data, N, rows, parallel=parallel, kernel=kernel)
        assert out.dtype == np.float32 and out.shape == (rows.shape[0], N)
        assert np.all(np.abs(out - ref[: rows.shape[0]]) <= tolerance(w, rows))


@given(problem=problems(), compact=st.booleans())
def test_from_dense_round_trips_and_counts(problem, compact):
    w, _ = problem
    m = CSRMatrix.from_dense(w, compact=compact)
    np.testing.assert_array_equal(m.to_dense(), w)
    assert m.indices.dtype == (np.uint16 if compact else np.int32)  # K <= 65,536 here
    assert m.bytes_per_nonzero == (6 if compact else 8)
    assert m.shape == w.shape and m.nnz == np.count_nonzero(w)
    assert m.indptr.size == w.shape[0] + 1 and m.indptr[-1] == m.nnz
    assert m.nbytes == m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
    assert m.density == (m.nnz / w.size if w.size else 0.0)
    for n in range(w.shape[0]):  # sorted columns within every row
        assert np.all(np.diff(m.indices[m.indptr[n]: m.indptr[n + 1]]) > 0)


@given(problem=problems())
def test_from_dense_builds_scipys_arrays(problem):
    sp = pytest.importorskip("scipy.sparse")
    w, _ = problem
    w[w.shape[0] // 2:, :1] = -0.0  # negative zeros are zeros too
    m, s = CSRMatrix.from_dense(w, compact=False), sp.csr_matrix(w)
    for name in ("indptr", "indices", "data"):
        mine, theirs = getattr(m, name), getattr(s, name)
        assert mine.dtype == theirs.dtype, name
        np.testing.assert_array_equal(mine, theirs, err_msg=name)


def test_matmul_shapes_and_dtypes():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5)).astype(np.float32) * (rng.random((6, 5)) < 0.4)
    m = CSRMatrix.from_dense(w)
    x = rng.standard_normal((2, 3, 5))
    for xs in (x[0, 0], x[0], x, x.astype(np.float16)):
        out = m.matmul(xs)
        assert out.dtype == np.float32 and out.shape == xs.shape[:-1] + (6,)
        np.testing.assert_allclose(out, xs.astype(np.float32) @ w.T, rtol=1e-5, atol=1e-5)


def test_reference_switch_uses_the_twin(monkeypatch):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((9, 7)).astype(np.float32) * (rng.random((9, 7)) < 0.5)
    x = rng.standard_normal((3, 7)).astype(np.float32)
    m = CSRMatrix.from_dense(w)
    monkeypatch.setenv("TINYINFER_REFERENCE", "1")
    np.testing.assert_array_equal(m.matmul(x), csr_matmul_reference(m.indptr, m.indices, m.data, 9, x))


def test_balanced_chunks_cover_rows_with_even_work():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((400, 300)).astype(np.float32)
    w[:50] *= rng.random((50, 300)) < 0.9  # heavy rows first, then light ones
    w[50:] *= rng.random((350, 300)) < 0.05
    m = CSRMatrix.from_dense(w)
    starts = kernels.balanced_row_chunks(m.indptr, 8, align=1)
    assert starts[0] == 0 and starts[-1] == 400 and np.all(np.diff(starts) > 0)
    work = np.diff((m.indptr + np.arange(401))[starts])  # nonzeros + rows of each chunk
    assert work.max() <= 1.3 * work.mean()  # rows are not split, so close to, not exactly, equal
    assert np.diff(starts)[0] < np.diff(starts)[-1]  # the heavy rows get smaller chunks


@pytest.mark.parametrize("bad, error, words", [
    (np.array([[1.0, np.nan]], np.float32), ValueError, "NaN/Inf"),
    (np.array([[1.0, np.inf]], np.float32), ValueError, "NaN/Inf"),
    (np.array([[1, 0]]), TypeError, "float array"),
    (np.zeros(3, np.float32), ValueError, "2-D"),
])
def test_from_dense_errors_name_the_argument(bad, error, words):
    with pytest.raises(error, match=words) as e:
        CSRMatrix.from_dense(bad)
    assert str(e.value).startswith("w ")


@pytest.mark.parametrize("x, error, words", [
    (np.zeros(4, np.float32), ValueError, "K = 3"),
    (np.zeros((2, 4), np.float32), ValueError, "K = 3"),
    (np.array([1.0, np.nan, 0.0], np.float32), ValueError, "NaN/Inf"),
    (np.zeros(3, np.int64), TypeError, "float array"),
    (np.float32(1.0), ValueError, "K = 3"),
])
def test_matmul_errors_name_the_argument(x, error, words):
    m = CSRMatrix.from_dense(np.eye(3, dtype=np.float32))
    with pytest.raises(error, match=words) as e:
        m.matmul(x)
    assert str(e.value).startswith("x ")


def test_constructor_checks_the_arrays():
    m = CSRMatrix.from_dense(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="indptr must have N \\+ 1 = 4"):
        CSRMatrix(m.indptr[:-1], m.indices, m.data, (3, 3))
    with pytest.raises(ValueError, match="indices must lie in 0 .. K-1 = 1"):
        CSRMatrix(m.indptr, m.indices, m.data, (3, 2))
    with pytest.raises(TypeError, match="data must be a 1-D float32"):
        CSRMatrix(m.indptr, m.indices, m.data.astype(np.float64), (3, 3))


def test_balanced_chunks_start_on_whole_cache_lines():
    m = CSRMatrix.from_dense(np.ones((1000, 3), np.float32))
    starts = kernels.balanced_row_chunks(m.indptr, 3)
    assert starts[0] == 0 and starts[-1] == 1000 and np.all(np.diff(starts) > 0)
    assert np.all(starts[:-1] % kernels.ALIGN_ROWS == 0)  # 16 float32 outputs: one 64-byte line
    assert kernels.balanced_row_chunks(CSRMatrix.from_dense(np.ones((5, 3), np.float32)).indptr, 4).tolist() == [0, 5]
    for shape in ((1, 7), (3, 33), (17, 5)):  # the output starts a line too
        out = kernels.aligned_empty(shape)
        assert out.shape == shape and out.dtype == np.float32 and out.flags.c_contiguous
        assert out.ctypes.data % 64 == 0


@pytest.mark.parametrize("kernel", kernels.KERNELS)
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("B", [1, 3, 17])
def test_every_row_length_around_the_unrolls(kernel, parallel, B):
    # The vector SpMM takes four nonzeros a step, then the last 0..3 one by one; LLVM's vectorized
    # SpMV takes 32 at a time, then 8, then single ones: rows of 0..69 nonzeros cover every tail.
    rng = np.random.default_rng(5)
    N, K = 70, 80
    w = np.zeros((N, K), np.float32)
    for n in range(N):
        w[n, rng.choice(K, size=n, replace=False)] = rng.standard_normal(n)
    x = rng.standard_normal((B, K)).astype(np.float32)
    for dtype in INDEX_DTYPES:
        m = CSRMatrix.from_dense(w).with_index_dtype(dtype)
        out = kernels.csr_matmul(m.indptr, m.indices, m.data, N, x, parallel=parallel, kernel=kernel)
        ref = csr_matmul_reference(m.indptr, m.indices, m.data, N, x)
        assert np.all(np.abs(out - ref) <= tolerance(w, x)), dtype


@pytest.mark.parametrize("K, dtype", [(65_536, np.uint16), (65_537, np.int32)])
def test_compact_columns_up_to_k_65536(K, dtype):
    # uint16 holds columns 0..65,535: K = 65,536 is the largest K that fits, and its last column
    # (65,535, all bits set) must come back as 65,535, never as -1 (sign extension).
    w = np.zeros((3, K), np.float32)
    w[0, [0, 32_767, 32_768, 65_535]] = [1.0, 2.0, 3.0, 4.0]
    w[2, K - 1] = 5.0
    m = CSRMatrix.from_dense(w)
    assert m.indices.dtype == dtype and m.indices.max() == K - 1
    np.testing.assert_array_equal(m.to_dense(), w)
    x = np.zeros((3, K), np.float32)
    x[:, [0, 32_767, 32_768, 65_535, K - 1]] = np.arange(1, 16, dtype=np.float32).reshape(5, 3).T
    ref = x @ w.T
    for parallel in (False, True):
        for rows in (x, x[:1]):
            out = kernels.csr_matmul(m.indptr, m.indices, m.data, 3, rows, parallel=parallel)
            np.testing.assert_allclose(out, ref[: rows.shape[0]], rtol=1e-6)
    np.testing.assert_allclose(csr_matmul_reference(m.indptr, m.indices, m.data, 3, x), ref, rtol=1e-6)


def test_index_dtypes_widen_and_narrow_with_checks():
    w = np.zeros((2, 70_000), np.float32)
    w[0, 10], w[1, 65_535] = 1.0, 2.0
    m = CSRMatrix.from_dense(w)  # K > 65,536: compact falls back to SciPy's int32
    assert m.indices.dtype == np.int32 and m.bytes_per_nonzero == 8
    narrow = m.with_index_dtype(np.uint16)  # every column here happens to fit
    assert narrow.indices.dtype == np.uint16 and narrow.data is m.data and narrow.indptr is m.indptr
    np.testing.assert_array_equal(narrow.with_index_dtype(np.int32).indices, m.indices)
    w[1, 65_536] = 3.0
    with pytest.raises(ValueError, match="column 65536 does not fit in uint16"):
        CSRMatrix.from_dense(w).with_index_dtype(np.uint16)
    with pytest.raises(TypeError, match="dtype must be one of uint16, int32, int64"):
        m.with_index_dtype(np.int16)
    with pytest.raises(TypeError, match="indices must be a 1-D uint16 or int32 or int64 array"):
        CSRMatrix(m.indptr, m.indices.astype(np.int16), m.data, m.shape)
    with pytest.raises(TypeError, match="indptr must be a 1-D int32 or int64 array"):
        CSRMatrix(m.indptr.astype(np.uint16), m.indices, m.data, m.shape)


def test_csr_matmul_rejects_an_unknown_kernel():
    m = CSRMatrix.from_dense(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernels.csr_matmul(m.indptr, m.indices, m.data, 3, np.ones((2, 3), np.float32), kernel="fast")

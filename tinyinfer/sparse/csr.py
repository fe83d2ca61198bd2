"""CSR (compressed sparse row) matrices by hand: the format, its NumPy product, and CSRMatrix.

Lesson: lessons/05-pruning.py

A pruned weight W: (N, K) is mostly zeros. CSR keeps only the nonzeros, row after row:

    data     float32 (nnz,)   the nonzero values, row 0's first, then row 1's, ...
    indices  int     (nnz,)   the column of each value, ascending within a row
    indptr   int     (N+1,)   row n's values are data[indptr[n] : indptr[n+1]]

    W = [[0, 1.5, 0],        data    = [1.5, 2, 3]
         [0, 0,   0],  ->    indices = [1,   0, 2]
         [2, 0,   3]]        indptr  = [0, 1, 1, 3]     (row 1 is empty: indptr[1] == indptr[2])

`CSRMatrix.from_dense(w, compact=False)` builds exactly the arrays `scipy.sparse.csr_matrix(W)`
builds from a dense array (explicit zeros dropped, columns sorted, int32 indices unless a size needs
int64), and tests/test_sparse_csr.py checks that when SciPy is installed.

Bytes per nonzero. 4 of value + 4 of column (+ one indptr entry a row), so a SciPy-style CSR matrix
is smaller than dense float32 only below 50% density. A matrix-vector product reads every byte of
the matrix once and does one multiply-add per nonzero, so once the kernel keeps up, its time is its
bytes: 8 bytes a nonzero against dense's 4 a weight is why CSR needs high sparsity to win.

Compact columns (the default, `compact=True`). A column index below 65,536 fits in 16 bits, so when
K <= 65,536 (every layer of the models in this project: K is at most a few thousand) the columns
are stored as uint16 and a nonzero costs 6 bytes instead of 8: a quarter less to read. What it costs:

* It is not SciPy's or PyTorch's format. scipy.sparse keeps int32 or int64 indices (given uint16
  ones, it builds an int32 copy) and torch's sparse CSR tensors take int32 or int64 only, so handing
  the arrays over means widening them: `m.with_index_dtype(np.int32)` (in C or Rust, one loop of
  zero-extending copies). Reading such arrays in, narrow only after checking that every column is
  below 65,536 (`with_index_dtype(np.uint16)` refuses otherwise). Files this project wrote before
  compact columns hold int32 indices; they load as they are (every kernel takes both).
* The kernel is compiled once per index dtype (Numba specializes on it; a C port writes two
  functions or one generic one), and K > 65,536 must keep 32-bit columns: `compact=True` falls back
  to SciPy's dtype by itself there.
* Unsigned: a C port must zero-extend (uint16_t -> size_t), never sign-extend an int16_t, or
  columns 32,768..65,535 turn negative.

Values stay float32: float16 values would save 2 more bytes a nonzero (4 in all) but change the
weights (about 3 decimal digits), which is quantization, a separate decision (lessons/04).

`csr_matmul_reference` is the product in NumPy, the twin of the Numba kernels in
tinyinfer/sparse/kernels.py. TINYINFER_REFERENCE=1 makes `CSRMatrix.matmul` use it (read at every
call, as in tinyinfer/quant).

Shapes: N output features (rows), K input features (columns), B rows of activations.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_matmul_input, check_weight_matrix
from ..quant.formats import use_reference

INT32_MAX = np.iinfo(np.int32).max
COMPACT_MAX_K = 1 << 16  # uint16 columns hold 0 .. 65,535, so K up to 65,536
INDEX_DTYPES = (np.uint16, np.int32, np.int64)  # what `indices` may hold (indptr: int32 or int64)


def index_dtype(*sizes):
    """int32 while every size fits (SciPy's rule: half the index memory), else int64."""
    return np.int32 if max(sizes, default=0) <= INT32_MAX else np.int64


def column_dtype(N, K, nnz, compact=True):
    """The dtype of `indices`: uint16 when compact and K <= 65,536, else SciPy's int32 / int64."""
    return np.uint16 if compact and K <= COMPACT_MAX_K else index_dtype(N, K, nnz)


def csr_matmul_reference(indptr, indices, data, N, x):
    """x: float32 (B, K) -> float32 (B, N) = x @ W.T, with no Python loop.

    Every stored weight meets the one x it multiplies (a gather), then each row's products are
    summed as one segment with np.add.reduceat. reduceat cannot express an empty segment (it
    returns the element at the start instead), so only non-empty rows are reduced; empty rows
    stay 0. Because empty rows have no products, the segments of the non-empty rows still end
    exactly where the next non-empty row starts.
    """
    B = x.shape[0]
    out = np.zeros((B, N), dtype=np.float32)
    products = x[:, indices] * data  # (B, nnz) float32
    nonempty = indptr[1:] > indptr[:-1]  # (N,)
    if nonempty.any():
        out[:, nonempty] = np.add.reduceat(products, indptr[:-1][nonempty], axis=1)
    return out


# --------------------------------------------------------------------------------------------
# checks that turn bad input into an error that says what came


def _check_dense(w):
    return check_weight_matrix(w, "a sparse matrix stores only finite weights")


def _check_arrays(indptr, indices, data, shape):
    try:
        N, K = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be two ints (N, K), got {shape!r}") from None
    if N < 0 or K < 0:
        raise ValueError(f"shape must be non-negative (N, K), got {(N, K)}")
    for name, arr, allowed in (("indptr", indptr, (np.int32, np.int64)), ("indices", indices, INDEX_DTYPES)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype not in allowed:
            names = " or ".join(np.dtype(d).name for d in allowed)
            raise TypeError(f"{name} must be a 1-D {names} array, got {getattr(arr, 'dtype', type(arr))} "
                            f"with shape {getattr(arr, 'shape', None)}")
    if not isinstance(data, np.ndarray) or data.ndim != 1 or data.dtype != np.float32:
        raise TypeError(f"data must be a 1-D float32 array, got {getattr(data, 'dtype', type(data))}")
    if indptr.size != N + 1:
        raise ValueError(f"indptr must have N + 1 = {N + 1} entries for shape {(N, K)}, got {indptr.size}")
    if indices.size != data.size:
        raise ValueError(f"indices ({indices.size}) and data ({data.size}) must have one entry per nonzero each")
    if indptr[0] != 0 or indptr[-1] != data.size or np.any(np.diff(indptr) < 0):
        raise ValueError(f"indptr must rise from 0 to nnz = {data.size}, got {indptr[0]} .. {indptr[-1]} "
                         f"(non-decreasing: {bool(np.all(np.diff(indptr) >= 0))})")
    if indices.size and (indices.min() < 0 or indices.max() >= K):
        raise ValueError(f"indices must lie in 0 .. K-1 = {K - 1}, got {indices.min()} .. {indices.max()}")
    return N, K


# --------------------------------------------------------------------------------------------
# CSRMatrix: what the model holds in place of a dense pruned weight


class CSRMatrix:
    """A (N, K) float32 matrix in CSR form; `matmul(x)` is x @ W.T, like a dense linear weight."""

    def __init__(self, indptr, indices, data, shape):
        self.shape = _check_arrays(indptr, indices, data, shape)
        self.indptr = indptr  # int (N+1,)
        self.indices = indices  # int (nnz,)
        self.data = data  # float32 (nnz,)

    @classmethod
    def from_dense(cls, w, compact=True):
        """w: float (N, K) -> CSRMatrix of its nonzeros.

        compact=True: uint16 columns when K <= 65,536 (6 bytes a nonzero; see the module docstring);
        compact=False: exactly the arrays scipy.sparse.csr_matrix(w) builds (int32 columns).
        """
        w = _check_dense(w)
        N, K = w.shape
        rows, cols = np.nonzero(w)  # row-major order: rows ascending, columns ascending within a row
        indptr = np.zeros(N + 1, dtype=index_dtype(N, K, rows.size))
        np.cumsum(np.bincount(rows, minlength=N), out=indptr[1:])  # (N+1,) running count of nonzeros
        return cls(indptr, cols.astype(column_dtype(N, K, rows.size, compact)), w[rows, cols], (N, K))

    def with_index_dtype(self, dtype):
        """The same matrix with `indices` as dtype (uint16, int32 or int64); indptr and data shared.

        Widening always works (uint16 -> int32 is what SciPy and PyTorch need); narrowing to uint16
        only when every column is below 65,536, else a ValueError says which column does not fit.
        """
        dtype = np.dtype(dtype)
        if dtype not in INDEX_DTYPES:
            raise TypeError(f"dtype must be one of uint16, int32, int64, got {dtype}")
        top = int(self.indices.max()) if self.indices.size else -1
        if top > np.iinfo(dtype).max:
            raise ValueError(f"column {top} does not fit in {dtype} (at most {np.iinfo(dtype).max}); "
                             f"keep wider indices for K = {self.shape[1]}")
        return CSRMatrix(self.indptr, self.indices.astype(dtype), self.data, self.shape)

    def to_dense(self):
        """float32 (N, K) with zeros where nothing is stored."""
        N, K = self.shape
        w = np.zeros((N, K), dtype=np.float32)
        rows = np.repeat(np.arange(N), np.diff(self.indptr))  # (nnz,) the row of every stored value
        w[rows, self.indices] = self.data
        return w

    # --- sizes ---

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    @property
    def nbytes(self) -> int:
        """Bytes of data + indices + indptr (what the format costs in memory)."""
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes)

    @property
    def bytes_per_nonzero(self) -> int:
        """Value + column bytes of one stored weight: 8 as SciPy stores them, 6 with uint16 columns."""
        return int(self.data.itemsize + self.indices.itemsize)

    @property
    def density(self) -> float:
        """Fraction of the N * K entries that are stored (0.0 for an empty shape)."""
        N, K = self.shape
        return self.nnz / (N * K) if N * K else 0.0

    def __repr__(self):
        return (f"CSRMatrix(shape={self.shape}, nnz={self.nnz}, density={self.density:.3f}, "
                f"{self.indices.dtype} columns, {self.nbytes} bytes)")

    # --- arithmetic ---

    def matmul(self, x):
        """x: (K,) or (..., K) -> float32 (N,) or (..., N) = x @ W.T (float16/float64 x converted)."""
        N, K = self.shape
        x2, lead = check_matmul_input(x, K)  # (B, K) float32
        if use_reference():
            out = csr_matmul_reference(self.indptr, self.indices, self.data, N, x2)
        else:
            from . import kernels  # imports Numba only when a fast path is first needed

            out = kernels.csr_matmul(self.indptr, self.indices, self.data, N, x2)
        return out.reshape(*lead, N)

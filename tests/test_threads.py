"""The thread policy: BLAS thread counts set and restored, the environment override, the layer."""
import numba
import numpy as np
import pytest

from tinyinfer import threads

pytest.importorskip("threadpoolctl")
needs_blas = pytest.mark.skipif(not threads._blas_libraries(), reason="no BLAS library found by threadpoolctl")


@needs_blas
def test_set_and_restore_blas_threads():
    before = threads.get_blas_threads()
    with threads.blas_threads(1):
        assert threads.get_blas_threads() == 1
        a = np.ones((64, 64), np.float32)
        assert np.array_equal(a @ a, np.full((64, 64), 64, np.float32))  # BLAS still works
    assert threads.get_blas_threads() == before


@needs_blas
def test_restored_even_after_an_error():
    before = threads.get_blas_threads()
    with pytest.raises(RuntimeError):
        with threads.blas_threads(1):
            raise RuntimeError("boom")
    assert threads.get_blas_threads() == before


def test_bad_counts_are_named(monkeypatch):
    with pytest.raises(ValueError, match="BLAS threads must be >= 1, got 0"):
        threads.set_blas_threads(0)
    monkeypatch.setenv(threads.BLAS_ENV, "two")
    with pytest.raises(ValueError, match="TINYINFER_BLAS_THREADS must be a positive integer, got 'two'"):
        threads.policy_blas_threads()
    monkeypatch.setenv(threads.BLAS_ENV, "0")
    with pytest.raises(ValueError, match="positive integer"):
        threads.policy_blas_threads()


def test_policy_default_and_override(monkeypatch):
    monkeypatch.delenv(threads.BLAS_ENV, raising=False)
    assert threads.policy_blas_threads() == 1
    monkeypatch.setenv(threads.BLAS_ENV, "2")
    assert threads.policy_blas_threads() == 2


@needs_blas
def test_apply_holds_blas_to_the_policy(monkeypatch):
    before = threads.get_blas_threads()
    monkeypatch.setattr(threads, "_applied", False)
    monkeypatch.setenv(threads.BLAS_ENV, "1")
    try:
        threads.apply()
        assert threads.get_blas_threads() == 1 and threads._applied
        threads.set_blas_threads(before)
        threads.apply()  # idempotent: a second call changes nothing
        assert threads.get_blas_threads() == before
    finally:
        threads.set_blas_threads(before)


def test_describe_names_the_layer():
    info = threads.describe()
    assert {"numba_threading_layer", "numba_threads", "blas_threads", "kernels_own_cores"} <= set(info)
    assert info["numba_threads"] == numba.get_num_threads()

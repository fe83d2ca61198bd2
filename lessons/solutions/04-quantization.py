"""Worked solutions to the exercises of lesson 04 (quantization).

Run from the repository root: `python lessons/solutions/04-quantization.py` (all exercises) or
`python lessons/solutions/04-quantization.py 3 7` (some). TINYINFER_LESSON_SMALL=1 shortens the
evaluations (fewer held-out windows, less calibration text): the figures then move by a few
percent, the rankings rarely.
"""
import functools
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import tinyinfer
from tinyinfer import threads
from tinyinfer.bench.quant_quality import float_layer_hessians
from tinyinfer.corpus import token_stream
from tinyinfer.evaluate import evaluate
from tinyinfer.lesson_tools import check, compare, run_exercises
from tinyinfer.lessons import repo_root
from tinyinfer.model import Model, embedding_name
from tinyinfer.quant import quantize
from tinyinfer.quant import kernels as qkernels
from tinyinfer.quant.gptq import (awq_scale_model, calibration_windows, gptq_quantize_matrix, gptq_quantize_model,
                                  inverse_cholesky_upper, predicted_error_ratio, relative_output_error)
from tinyinfer.quant.imatrix import collect_imatrix
from tinyinfer.quant.model import linear_weight_names, quantize_model

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"
SEQ_LEN = 128
EVAL_WINDOWS = 4 if SMALL else 32


@functools.lru_cache(maxsize=None)
def teacher():
    return tinyinfer.load(repo_root() / "models" / "teacher", dtype="float32")


@functools.lru_cache(maxsize=None)
def streams():
    tok = teacher().tokenizer
    return token_stream(tok, "train", progress=False), token_stream(tok, "val", progress=False)


def kl(model):
    """Mean KL(teacher || model) per position on the first EVAL_WINDOWS held-out windows."""
    return evaluate(model, streams()[1], SEQ_LEN, max_windows=EVAL_WINDOWS, reference=teacher())["kl_divergence"]


def calib(n_windows, seq_len=SEQ_LEN, seed=0):
    return calibration_windows(streams()[0], n_windows, seq_len, seed=seed)


# ---- exercise 1 -----------------------------------------------------------------------------------


def exercise_1():
    """How much calibration text an importance matrix needs (Q4_1 + imatrix)."""
    model = teacher()
    rtn = kl(quantize_model(model, "q4_1"))
    print(f"Q4_1 round-to-nearest: KL {rtn:.5f} ({EVAL_WINDOWS} held-out windows of {SEQ_LEN})")
    sizes = (1, 4, 16) if SMALL else (1, 4, 16, 64)
    for n in sizes:
        imatrix = collect_imatrix(model, calib(n), progress=False)
        value = kl(quantize_model(model, "q4_1", imatrix=imatrix))
        print(f"  imatrix from {n:>2} windows ({n * SEQ_LEN:>5} tokens): KL {value:.5f}, "
              + compare(value, rtn, what="", verb="", of="RTN's", more="worse", less="better"))
    print("The imatrix only ranks columns by their mean x^2, a quantity that settles after a few thousand "
          "tokens: one window is already most of the gain, more text refines it a little.")


# ---- exercise 2 -----------------------------------------------------------------------------------


def exercise_2():
    """Block size against bits per weight (int4, one float16 scale per block)."""
    model = teacher()
    W = np.asarray(model.params["model.layers.0.mlp.down_proj.weight"], np.float32)  # (192, 512)
    sigma = W.std()
    print(f"{'block':>6} {'bits/weight':>11} {'RMS error / std':>16}")
    previous, paying = None, 256
    for block in (256, 128, 64, 32, 16, 8):  # from large to small: does halving the block pay?
        groups = W.reshape(-1, block)
        d = np.abs(groups).max(axis=1) / 7  # symmetric int4: -7..7
        q = np.clip(np.round(groups / np.where(d > 0, d, 1)[:, None]), -7, 7)
        rms = np.sqrt(((q * d[:, None] - groups) ** 2).mean()) / sigma
        bits = 4 + 16 / block
        note = ""
        if previous is not None:
            # halving the block costs (bits - previous bits); one more bit everywhere would halve the
            # error, so the smaller block pays if it cuts the error by more than 2^(extra bits) does
            extra = bits - previous[1]
            factor = rms / previous[2]
            pays = factor < 2 ** -extra
            note = f"  {'pays' if pays else 'does not pay'} for its {extra:.3f} extra bits " \
                   f"(error x{factor:.2f}; the same bits as a finer grid: x{2 ** -extra:.2f})"
            if pays and paying == previous[0]:
                paying = block
        print(f"{block:>6} {bits:>11.3f} {rms:>16.4f}{note}")
        previous = (block, bits, rms)
    print(f"On this layer the smallest block that still pays for its scale is {paying} weights (by the rule of "
          "thumb that one more bit halves the error). Small blocks keep an outlier's damage local, but each "
          "float16 scale costs 16 bits. K-quants keep 256-wide super-blocks with cheap 6-bit sub-block scales "
          "to get both.")


# ---- exercise 3 -----------------------------------------------------------------------------------


def exercise_3():
    """Sensitivity: one layer at a time in Q4_0."""
    model = teacher()
    costs = {}
    for name in linear_weight_names(model.config):
        params = dict(model.params)
        params[name] = quantize(model.params[name], "q4_0")
        costs[name] = kl(Model(model.config, params, model.tokenizer))
    whole = kl(quantize_model(model, "q4_0"))
    ranked = sorted(costs.items(), key=lambda kv: -kv[1])
    print("most sensitive layers (KL when only that layer is Q4_0):")
    for name, value in ranked[:6]:
        print(f"  {name}: {value:.5f}")
    by_role, by_block = {}, {}
    for name, value in costs.items():
        role, block = name.split(".")[-2], int(name.split(".")[2])
        by_role[role] = by_role.get(role, 0) + value
        by_block[block] = by_block.get(block, 0) + value
    print("summed by role:  " + ", ".join(f"{r} {v:.4f}" for r, v in sorted(by_role.items(), key=lambda kv: -kv[1])))
    print("summed by block: " + ", ".join(f"{b} {v:.4f}" for b, v in sorted(by_block.items())))
    print(f"sum of the single-layer costs {sum(costs.values()):.5f} vs the whole model in Q4_0 {whole:.5f}: "
          f"{compare(sum(costs.values()), whole, what='the sum', verb='is', of='the whole', more='more', less='less')}"
          " -- small errors add nearly independently, so the KL is close to additive.")


# ---- exercise 4 -----------------------------------------------------------------------------------


def exercise_4():
    """AWQ: the same function, and four Q4_0 variants ranked."""
    model = teacher()
    ids = streams()[1][:64]
    for n in ((4, 8) if SMALL else (4, 64)):
        windows = calib(n, 64 if SMALL else SEQ_LEN)
        scaled = awq_scale_model(model, windows, progress=False)
        diff = np.abs(scaled.logits(ids) - model.logits(ids)).max() / np.abs(model.logits(ids)).max()
        print(f"{n} calibration windows: AWQ-scaled logits differ by {diff:.1e} (relative): the same function")
        variants = {"RTN": quantize_model(model, "q4_0"), "AWQ + RTN": quantize_model(scaled, "q4_0"),
                    "GPTQ": gptq_quantize_model(model, windows, progress=False),
                    "AWQ + GPTQ": gptq_quantize_model(scaled, windows, progress=False)}
        values = {name: kl(m) for name, m in variants.items()}
        print("   ranked by KL: " + ", ".join(f"{name} {values[name]:.5f}" for name in sorted(values, key=values.get)))
        print(f"   with {windows.size:,} calibration tokens: "
              + compare(values["GPTQ"], values["RTN"], what="GPTQ", verb="has", of="RTN's KL", more="more: too little "
                        "text to estimate H, it fits the calibration windows and loses on held-out text",
                        less="less: error compensation pays")
              + "; " + compare(values["AWQ + RTN"], values["RTN"], what="AWQ + RTN", verb="has", of="RTN's KL",
                               more="more", less="less"))
    print("GPTQ compensates errors across columns, AWQ only rescales them; GPTQ needs enough text for H "
          "(K x K numbers per layer) to generalise, AWQ only a per-column mean, which is why AWQ holds up on "
          "tiny calibration sets.")


# ---- exercise 5 -----------------------------------------------------------------------------------


def exercise_5():
    """Threads: OpenBLAS's spinning workers against Numba's."""
    rng = np.random.default_rng(0)
    size = 1024 if SMALL else 2048
    W = rng.standard_normal((size, size), dtype=np.float32)
    qt = quantize(W, "q4_0")
    x = rng.standard_normal(size).astype(np.float32)
    xb = x[None]
    qkernels.qtensor_matmul(qt, xb, parallel=True)  # compile

    def kernel_after(sleep, rounds=7):
        times = []
        for _ in range(rounds):
            with threads.blas_threads(2):
                for _ in range(3):
                    W @ x  # OpenBLAS's two threads run, then keep spinning for a while
            if sleep:
                time.sleep(0.1)
            start = time.perf_counter()
            qkernels.qtensor_matmul(qt, xb, parallel=True)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    right_after, after_sleep = kernel_after(False), kernel_after(True)
    print(f"Q4_0 {size}x{size} decode right after a 2-thread BLAS call: {right_after * 1e3:.3f} ms; "
          f"after a 0.1 s pause: {after_sleep * 1e3:.3f} ms "
          f"({compare(right_after, after_sleep, what='right after', verb='takes', of='the time after a pause', more='longer', less='shorter')})")
    before = threads.numba_threads()
    try:
        threads.set_kernel_threads(1)
        one = kernel_after(True)
    finally:
        threads.set_kernel_threads(before)
    print(f"with one Numba thread (after a pause): {one * 1e3:.3f} ms")
    seen = "seen here" if right_after > 1.1 * after_sleep else (
        f"not seen in this run: the machine's other load (load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores) moves these sub-millisecond times more than the spinning does")
    print("What to expect: OpenBLAS's workers busy-wait for a while after a call returns, so Numba's threads that "
          f"start right then share the cores with them and the kernel runs slower than after a pause ({seen}). "
          "tinyinfer runs BLAS with one thread where it alternates with its kernels (tinyinfer/threads.py). "
          "`python -m tinyinfer.bench.roofline --contention` repeats the measurement with a busy neighbour.")


# ---- exercise 6 -----------------------------------------------------------------------------------


def exercise_6():
    """The embedding (and tied head) in Q8_0."""
    model = teacher()
    name = embedding_name(model.config)
    table = np.asarray(model.params[name], np.float32)  # (V, C): the lookup and, tied, the head
    q = quantize(table, "q8_0")
    params = dict(model.params)
    params[name] = q.dequantize()  # the values a Q8_0 table stands for, used both ways
    added = kl(Model(model.config, params, model.tokenizer))
    linear = sum(quantize_model(model, "q8_0").params[n].nbytes for n in linear_weight_names(model.config))
    rest = sum(v.nbytes for k, v in model.params.items() if k not in linear_weight_names(model.config) and k != name)
    before, after = linear + rest + table.nbytes, linear + rest + q.nbytes
    print(f"Q8_0 embedding: KL added {added:.6f} (Q8_0 linear layers cost ~4e-4); the Q8_0 model shrinks "
          f"from {before / 1e6:.2f} MB to {after / 1e6:.2f} MB ({before / after:.2f}x)")
    print("For this small-vocabulary model the table is 1024 x 192: worth it for memory (a third of the Q8_0 "
          "model), nearly free in quality; llama.cpp quantizes token_embd and keeps the output head at a "
          "higher precision when it is separate.")


# ---- exercise 7 -----------------------------------------------------------------------------------


def exercise_7():
    """GPTQ's gain predicted by hand from H, then measured."""
    model = teacher()
    name = "model.layers.0.self_attn.o_proj.weight"
    H = float_layer_hessians(model, calib(8 if SMALL else 32))[name]  # (K, K) = 2 X^T X / M
    U = inverse_cholesky_upper(H)  # U^T U = (H + 0.01 mean(diag H) I)^-1
    mine = float(np.sqrt(np.sum(1.0 / np.diag(U) ** 2) / np.sum(np.diag(H))))
    check(mine, predicted_error_ratio(H), tol=1e-9, name="predicted ratio")
    W = np.asarray(model.params[name], np.float32)
    rtn = relative_output_error(W, quantize(W, "q4_0").dequantize(), H)
    gptq = relative_output_error(W, gptq_quantize_matrix(W, H, "q4_0").dequantize(), H)
    print(f"{name}: predicted GPTQ / RTN {mine:.3f}, measured {gptq / rtn:.3f} (RTN {rtn:.4f}, GPTQ {gptq:.4f})")
    # R_j^2 of input j against the inputs after it: 1 - 1 / (U_jj^2 H_jj) (damped H, so slightly below the truth)
    r2 = 1 - 1 / (np.diag(U) ** 2 * (np.diag(H) + 0.01 * np.mean(np.diag(H))))
    top = np.argsort(-r2)[:5]
    print("most predictable inputs (column: R^2 from the columns rounded after it): "
          + ", ".join(f"{j}: {r2[j]:.2f}" for j in top) + f"; median R^2 {np.median(r2):.2f}")
    print("o_proj reads the attention heads' outputs, some of them strongly correlated, which is why GPTQ "
          "gains most on the o_proj layers of this model.")


if __name__ == "__main__":
    run_exercises(globals())

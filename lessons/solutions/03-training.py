"""Worked solutions to the exercises of lesson 03 (training: gradients by hand, AdamW).

Run from the repository root: `python lessons/solutions/03-training.py` (all exercises) or
`python lessons/solutions/03-training.py 1 6` (some). TINYINFER_LESSON_SMALL=1 shortens the
training runs. The lesson's check cell imports hours_for_tokens_per_param from here.
"""
import json
import math
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from tinyinfer import corpus, ops
from tinyinfer.config import ModelConfig
from tinyinfer.evaluate import evaluate
from tinyinfer.gradcheck import numerical_grad
from tinyinfer.lesson_tools import check, compare, run_exercises
from tinyinfer.lessons import repo_root
from tinyinfer.model import Model, init_params, loss_and_grads
from tinyinfer.tokenizer import Tokenizer
from tinyinfer.train import AdamW, TrainConfig, clip_grad_norm, lr_at, sample_batch

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"


# ---- what the check cell uses -------------------------------------------------------------------


def hours_for_tokens_per_param(history, tokens_per_param):
    """Hours to show a model `tokens_per_param` tokens per parameter, at its run's average speed."""
    n_params = ModelConfig(**history["model_config"]).num_params()
    tokens_per_second = history["tokens_seen"] / history["train_seconds"]
    return tokens_per_param * n_params / tokens_per_second / 3600


# ---- shared set-up: section 6's data and model --------------------------------------------------


def section6_data(n_train_docs=16, n_val_docs=6):
    root = repo_root()
    tokenizer = Tokenizer.from_file(root / "models" / "tiny" / "tokenizer.json")
    splits = corpus.split_documents()
    train_docs = splits["train"][:: len(splits["train"]) // n_train_docs][:n_train_docs]

    def encode(docs):
        ids = []
        for d in docs:
            ids.extend(tokenizer.encode(d.text))
            ids.append(tokenizer.eos_id)
        return np.array(ids, dtype=np.int64)

    return tokenizer, encode(train_docs), encode(splits["val"][:n_val_docs])


def train_small(tokenizer, train_stream, tc, log_every=None):
    """Section 6's loop -> (model, train losses, gradient norms before clipping)."""
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=32, n_head=2,
                         n_kv_head=1, n_ctx=64, ffn_hidden=96)
    params = init_params(config, seed=tc.seed)
    model = Model(config, params, tokenizer)
    opt = AdamW(params, tc)
    losses, norms = [], []
    for step in range(tc.max_steps):
        inputs, targets = sample_batch(train_stream, tc, step)
        loss, grads = loss_and_grads(params, config, inputs, targets)
        norms.append(clip_grad_norm(grads, tc.grad_clip))
        opt.step(params, grads, lr_at(step, tc))
        losses.append(float(loss))
    return model, losses, norms


# ---- the exercises ------------------------------------------------------------------------------


def exercise_1():
    """Break a backward: RMSNorm without the term that moves r."""
    rng = np.random.default_rng(0)
    x, w, eps = rng.standard_normal((3, 8)), rng.standard_normal(8), 1e-5
    dout = rng.standard_normal((3, 8))
    _, cache = ops.rmsnorm_forward(x, w, eps)

    def broken_backward(dout, cache):
        xhat, rstd, w = cache
        dw = (dout * xhat).sum(axis=0)
        dx = rstd * (dout * w)  # the "- xhat * mean(dxhat * xhat)" term is gone
        return dx, dw

    numeric = numerical_grad(lambda: float((ops.rmsnorm_forward(x, w, eps)[0] * dout).sum()), x)
    right, broken = ops.rmsnorm_backward(dout, cache)[0], broken_backward(dout, cache)[0]
    print(f"largest error: {np.abs(right - numeric).max():.1e} with the full backward, "
          f"{np.abs(broken - numeric).max():.2f} without the term (the gradients are of order "
          f"{np.abs(numeric).max():.1f})")
    print("The forgotten term is the derivative through r = rms(x): x-hat depends on every x_j through "
          "the normaliser, not only on x_i. Without it the backward treats r as a constant. dw stays "
          "right: it never goes through r.")


def exercise_2():
    """The GELU check, and attention's dk, dv with G < H."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5))
    dout = rng.standard_normal((4, 5))
    _, cache = ops.gelu_forward(x)
    numeric = numerical_grad(lambda: float((ops.gelu_forward(x)[0] * dout).sum()), x)
    print(f"GELU: |backward - finite difference| = {np.abs(ops.gelu_backward(dout, cache) - numeric).max():.1e}")
    B, H, G, T, D = 1, 4, 2, 5, 3
    q, k, v = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, G, T, D)), rng.standard_normal((B, G, T, D))
    dout = rng.standard_normal((B, H, T, D))
    out, cache = ops.attention_forward(q, k, v)
    dq, dk, dv = ops.attention_backward(dout, cache)

    def loss():
        return float((ops.attention_forward(q, k, v)[0] * dout).sum())

    for name, array, grad in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
        print(f"attention d{name}: shape {grad.shape}, |backward - finite difference| = "
              f"{np.abs(grad - numerical_grad(loss, array)).max():.1e}")
    print(f"dk and dv have the shape of k and v, (B, G, S, D) = {dk.shape}: each key/value head is read by "
          f"H/G = {H // G} query heads, and a value used several times collects the sum of the "
          f"gradients of all its uses (the same rule as the norm gain shared by all rows).")


def exercise_3():
    """No warmup: lr = 1e-2 from the first step, with and without gradient clipping."""
    tokenizer, train_stream, _ = section6_data()
    steps = 40 if SMALL else 300

    def config(lr, warmup, clip=1.0):
        return TrainConfig(seq_len=32, batch_size=8, max_steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=warmup,
                           grad_clip=clip)

    runs = {"section 6: warmup 30, lr 3e-3": config(3e-3, 30), "no warmup, lr 1e-2": config(1e-2, 0),
            "no warmup, lr 1e-2, no clipping": config(1e-2, 0, 0.0), "no warmup, lr 1e-1": config(1e-1, 0)}
    results = {}
    for label, tc in runs.items():
        _, losses, norms = train_small(tokenizer, train_stream, tc)
        results[label] = (losses, norms)
        print(f"{label:>32}: loss at steps 0, 2, 5, 10: {[round(losses[i], 2) for i in (0, 2, 5, 10)]}, "
              f"final (mean of last 10) {np.mean(losses[-10:]):.3f}, largest gradient norm {max(norms):.2f}")
    base, fast = (np.mean(results[k][0][-10:]) for k in ("section 6: warmup 30, lr 3e-3", "no warmup, lr 1e-2"))
    print(compare(fast, base, what=f"After {steps} steps, no warmup at lr 1e-2", verb="ends at",
                  of="section 6's loss", more="worse", less="better: on a model this small a larger step "
                  "from the start pays, and warmup mostly protects larger models"))
    largest = max(results["no warmup, lr 1e-2"][1])
    print(f"Gradient clipping at 1.0 {'never acted' if largest <= 1.0 else 'acted'}: the largest gradient norm "
          f"was {largest:.2f}, so grad_clip=0 {'changed nothing' if largest <= 1.0 else 'let those steps through unscaled'}.")
    wild = results["no warmup, lr 1e-1"][0]
    print(f"At lr 1e-1 without warmup the first steps go from {wild[0]:.2f} to {max(wild[:10]):.2f} at worst and end at "
          f"{np.mean(wild[-10:]):.3f}: Adam moves every weight by about lr per step whatever its gradient, and a "
          f"step that large throws the random weights around before v, the gradient's running scale, settles.")


def exercise_4():
    """Overfitting on purpose: two documents, many steps."""
    tokenizer, train_stream, val_stream = section6_data(n_train_docs=2)
    tc = TrainConfig(seq_len=32, batch_size=8, max_steps=150 if SMALL else 1500, lr=3e-3, min_lr=3e-4,
                     warmup_steps=20)
    model, losses, _ = train_small(tokenizer, train_stream, tc)
    held_out = evaluate(model, val_stream, tc.seq_len, max_windows=16)["loss"]
    on_train = evaluate(model, train_stream, tc.seq_len, max_windows=16)["loss"]
    print(f"two documents ({len(train_stream):,} tokens), {tc.max_steps} steps: loss on them {on_train:.3f}, "
          f"held-out {held_out:.3f} (ln V = {math.log(tokenizer.vocab_size):.3f})")
    print(compare(held_out, on_train, what="The held-out loss", verb="is", of="the loss on the training text",
                  more="higher: the model memorises the two documents instead of learning Python",
                  less="lower, which would be surprising"))


def exercise_5():
    """Weight decay: why AdamW leaves norm gains alone."""
    tc = TrainConfig(lr=0.01, weight_decay=0.1)
    params = {"matrix": np.ones((2, 2)), "norm_gain": np.ones(2)}
    opt = AdamW(params, tc)
    zero = {name: np.zeros_like(p) for name, p in params.items()}
    for _ in range(100):
        opt.step(params, zero, lr=tc.lr)  # no gradient at all: only the decay acts
    print(f"after 100 steps with zero gradients: matrix entries {params['matrix'][0, 0]:.3f}, "
          f"norm gains {params['norm_gain'][0]:.3f}")
    print("Decay pulls a weight toward 0. For a matrix, 0 is a sensible prior: small weights, a smoother "
          "function. A norm gain's neutral value is 1, not 0: decaying it would shrink every channel's "
          "output after each RMSNorm for no reason, fighting the normalisation the layer exists for. "
          "Biases are left alone for the same reason (their neutral value is not 'small').")


def exercise_6():
    """Budget: hours for 20 tokens per parameter for the teacher, at its run's average speed."""
    history = json.loads((repo_root() / "models" / "teacher" / "history.json").read_text())
    n_params = ModelConfig(**history["model_config"]).num_params()
    speed = history["tokens_seen"] / history["train_seconds"]
    hours = 20 * n_params / speed / 3600
    print(f"{n_params:,} parameters x 20 = {20 * n_params:,} tokens at {speed:,.0f} tokens/s "
          f"= {hours:.2f} hours (the run itself took {history['train_seconds'] / 3600:.2f} h for "
          f"{history['tokens_seen'] / n_params:.1f} tokens per parameter)")
    check(hours_for_tokens_per_param(history, 20), hours, tol=1e-9, name="hours_for_tokens_per_param")


if __name__ == "__main__":
    run_exercises(globals())

"""Ship a trained run as a model folder with a model card (README.md) and its loss curves.

    python -m tinyinfer.model_card runs/teacher models/teacher --dtype float16 \
        --command "tinyinfer train --preset teacher --out runs/teacher"

The card's figures are measured on the shipped weights (after the float16 cast, if any), on the
whole held-out split, so anyone can reproduce them with `tinyinfer eval --model <folder>`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def plot_curves(history: dict, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = history["train"]
    ax.plot([r["tokens"] / 1e6 for r in train], [r["loss"] for r in train], label="train (25-step mean)", lw=1)
    val = history["val"]
    ax.plot([r["tokens"] / 1e6 for r in val], [r["loss"] for r in val], "o-", label="held-out", ms=3)
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title(title)
    ax.set_ylim(top=min(6.0, max(r["loss"] for r in val) + 0.2))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_card(run_dir, out_dir, dtype="float16", command="", seq_len=256, note=""):
    from . import load, save
    from .bench import machine
    from .corpus import describe, token_stream
    from .evaluate import evaluate

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = json.loads((run_dir / "history.json").read_text())
    save(load(run_dir), out_dir, dtype=np.float16 if dtype == "float16" else np.float32)
    model = load(out_dir)  # measure what ships, after the cast
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    seq_len = min(seq_len, model.config.n_ctx)
    metrics = evaluate(model, token_stream(model.tokenizer, "val", progress=False), seq_len)
    plot_curves(history, out_dir / "loss_curves.png", f"{out_dir.name}: {model.num_params():,} parameters")
    n_params = model.num_params()
    tokens = history["tokens_seen"]
    hours = history["train_seconds"] / 3600
    corpus = describe()
    mach = machine()
    last_train = np.mean([r["loss"] for r in history["train"][-8:]])
    card = f"""# {out_dir.name}

A {model.config.family.upper()}-family language model trained from scratch by tinyinfer on the
embedded corpus (the CPython {corpus['python']} standard library and its pydoc topics).

| | |
|---|---|
| parameters | {n_params:,} |
| config | {json.dumps(model.config.to_dict())} |
| tokenizer | byte-level BPE, {model.tokenizer.vocab_size} tokens, trained on the corpus' training split |
| tokens seen | {tokens:,} ({tokens / n_params:.1f} tokens per parameter; the training split has {corpus['bytes']['train']:,} bytes) |
| training time | {hours:.2f} h on {mach['cores']} cores ({mach['cpu']}), NumPy {mach['numpy']} |
| stored as | {dtype} safetensors |

Command (resumable: run it again to continue a stopped run):

    {command}
{chr(10) + note + chr(10) if note else ""}
## Held-out results (whole validation split, {metrics['tokens']:,} predicted tokens, windows of {seq_len})

| loss | perplexity | top-1 next-token accuracy |
|---|---|---|
| {metrics['loss']:.4f} | {metrics['perplexity']:.2f} | {100 * metrics['top1']:.2f}% |

Last training loss (mean of the final 200 steps): {last_train:.4f}.
Reproduce: `tinyinfer eval --model {out_dir.as_posix()}`.

![loss curves](loss_curves.png)

`history.json` holds every logged point (train loss every 25 steps, held-out loss at each
checkpoint, learning rate, gradient norm, tokens/s) and the exact model and training configs.
"""
    (out_dir / "README.md").write_text(card)
    return metrics


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--command", default="")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--note", default="", help="a paragraph about how the run went (interruptions, changes)")
    args = ap.parse_args(argv)
    print(json.dumps(write_card(args.run_dir, args.out_dir, args.dtype, args.command, args.seq_len, args.note)))


if __name__ == "__main__":
    main()

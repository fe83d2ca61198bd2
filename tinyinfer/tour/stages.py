"""The tour's rows: which model and which decoding mode each technique is, and the article's claim.

Lesson: lessons/09-putting-it-together.py

A row is a Stage: a model (built from the teacher, or loaded from a folder), a decoding mode
(tinyinfer/tour/decode.py), the stage it is compared against ("previous"), and what the article
claims for it. A stage whose model is missing (the student is not trained yet, say) stays in the
table with the reason, instead of stopping the tour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import load

# What the article says, quoted or closely paraphrased (shared/reference/inference-optimization-article.txt).
CLAIMS = {
    "naive": "the starting point: every token re-reads the whole conversation",
    "kv_cache": "caching: 'each new message only requires processing the new text'",
    "q8_0": "8-bit: 1/4 of the memory, 4x faster, accuracy drop often < 1%",
    "q4_0": "4-bit: 8x improvement",
    "pruned_sparse": "remove 50-90% of connections with minimal loss; 70% -> 3x",
    "pruned_structured": "fewer connections means fewer calculations",
    "student": "10% of the parameters keeps 95% of the capability, 10x faster",
    "engine": "optimized engines (batching, caching, scheduling): 2-10x, same model",
    "speculative": "(not in the article) a draft model guesses, the big model checks: same output",
    "stack_teacher": "combined: multiplication, not addition",
    "stack_student": "combined: 4 x 3 x 10 x 3 = 360x in theory, 10-100x in practice",
}


@dataclass
class Stage:
    key: str
    technique: str          # the row's label
    mode: str               # naive | cached | engine | speculative
    previous: str | None    # the stage this one adds to (ratio vs previous)
    model_key: str          # which built model it runs (see build_models)
    parts: tuple = ()       # for a combination: the single-technique stages it multiplies
    same_weights_as_teacher: bool = False  # quality is the teacher's by construction
    claim: str = ""
    missing: str | None = None  # why it cannot run, if it cannot
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.claim = self.claim or CLAIMS.get(self.key, "")


def stages(spec_k: int) -> list[Stage]:
    """The table, in order. Combinations name their parts, so the report can multiply them."""
    return [
        Stage("naive", "naive baseline: fp32 teacher, no KV cache, one request at a time", "naive", None,
              "teacher", same_weights_as_teacher=True),
        Stage("kv_cache", "+ KV cache (fp32 teacher, one request at a time)", "cached", "naive", "teacher",
              same_weights_as_teacher=True),
        Stage("q8_0", "Q8_0 weights (8-bit), KV cache", "cached", "kv_cache", "teacher_q8_0"),
        Stage("q4_0", "Q4_0 weights (4-bit), KV cache", "cached", "kv_cache", "teacher_q4_0"),
        Stage("pruned_sparse", "pruned 50% + fine-tuned, CSR sparse, KV cache", "cached", "kv_cache", "pruned"),
        Stage("pruned_structured", "pruned structured (50% MLP neurons, one-shot), KV cache", "cached",
              "kv_cache", "structured"),
        Stage("student", "distilled student (~10% of the parameters), KV cache", "cached", "kv_cache", "student"),
        Stage("engine", "engine: continuous batching, paged KV (fp32 teacher)", "engine", "kv_cache", "teacher",
              same_weights_as_teacher=True),
        Stage("speculative", f"speculative decoding: student drafts k={spec_k}, teacher verifies", "speculative",
              "kv_cache", "teacher", same_weights_as_teacher=True, extra={"k": spec_k}),
        Stage("stack_teacher", "stack at teacher size: Q8_0 + KV cache + continuous batching", "engine", "engine",
              "teacher_q8_0", parts=("kv_cache", "q8_0", "engine")),
        Stage("stack_student", "full stack: student + Q8_0 + KV cache + continuous batching", "engine",
              "stack_teacher", "student_q8_0", parts=("kv_cache", "student", "q8_0", "engine")),
    ]


def resolve(name_or_path: str) -> Path | None:
    """A model folder by path or shipped name (models/NAME); None if there is no model there."""
    from ..model_names import models_dir

    for path in (Path(name_or_path), models_dir() / name_or_path):
        if (path / "config.json").is_file():
            return path
    return None


def build_models(teacher_path, student_path, pruned_path, progress=True) -> tuple[dict, dict]:
    """(models, missing): every model the stages run, by key; missing: key -> reason."""
    from tqdm.auto import tqdm

    from ..quant.model import quantize_model
    from ..sparse.model import prune_model

    models, missing = {}, {}
    teacher_dir = resolve(teacher_path)
    if teacher_dir is None:
        raise FileNotFoundError(f"--model {teacher_path!r}: no model folder (config.json) there or in models/")
    steps = tqdm(total=6, desc="building models", disable=not progress, leave=False)
    teacher = load(teacher_dir)
    if teacher.tokenizer is None:
        raise ValueError(f"--model {teacher_path!r} has no tokenizer.json: the tour evaluates on corpus text")
    models["teacher"] = teacher
    steps.update(1)
    for fmt in ("q8_0", "q4_0"):
        models[f"teacher_{fmt}"] = quantize_model(teacher, fmt)
        steps.update(1)
    models["structured"] = prune_model(teacher, "neurons", 0.5)
    steps.update(1)

    pruned_dir = resolve(pruned_path) if pruned_path else None
    if pruned_dir is None:
        missing["pruned"] = (f"{pruned_path!r} not found: fine-tune a 50% sparse teacher first "
                             f"(`tinyinfer prune` then fine-tune; expected at models/teacher-pruned50)")
    else:
        models["pruned"] = _compatible(load(pruned_dir), teacher, pruned_dir, missing, "pruned")
    steps.update(1)

    student_dir = resolve(student_path) if student_path else None
    if student_dir is None:
        missing["student"] = (f"{student_path!r} not found: train it with "
                              f"`tinyinfer distill --out models/student`")
    else:
        student = _compatible(load(student_dir), teacher, student_dir, missing, "student")
        if student is not None:
            models["student"] = student
            models["student_q8_0"] = quantize_model(student, "q8_0")
    steps.update(1)
    steps.close()
    models = {k: v for k, v in models.items() if v is not None}
    if "student" in missing:
        missing["student_q8_0"] = missing["student"]
    return models, missing


def _compatible(model, teacher, path, missing, key):
    """The model if it speaks the teacher's tokens; otherwise None and a reason in `missing`."""
    if model.config.vocab_size != teacher.config.vocab_size:
        missing[key] = (f"{path} has vocab_size {model.config.vocab_size}, the teacher "
                        f"{teacher.config.vocab_size}: not the teacher's tokenizer")
        return None
    return model


def mark_missing(table: list[Stage], missing: dict) -> None:
    """Give every stage that needs a missing model its reason (speculative needs the student too)."""
    for stage in table:
        needs = [stage.model_key] + (["student"] if stage.mode == "speculative" else [])
        for key in needs:
            if key in missing:
                stage.missing = missing[key]
                break

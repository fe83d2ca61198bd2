"""tokenizer.json in and out: the Hugging Face `tokenizers` file format.

Lesson: lessons/02-tokenizer.py

What tinyinfer writes is what Hugging Face's library loads and encodes to the same ids:

    {"model": {"type": "BPE", "vocab": {"Ġthe": 262, ...}, "merges": ["Ġ t", ...]},
     "added_tokens": [{"id": 1023, "content": "<|endoftext|>", "special": true, ...}],
     "pre_tokenizer": {"type": "ByteLevel", ...}, "decoder": {"type": "ByteLevel", ...}, ...}

and tokenizer_from_dict reads such files, GPT-2's own included. Anything that would change how
text is encoded and that tinyinfer does not implement (a normalizer, another pre-tokenizer, a
non-BPE model, dropout, ...) raises ValueError naming it, rather than silently encoding
differently from Hugging Face.

Pre-tokenizers in this format: "gpt-2" is the ByteLevel pre-tokenizer (its regex is GPT-2's);
"smollm" is a Sequence of Digits(individual_digits) then ByteLevel, which is how SmolLM2's own
tokenizer.json writes it. llama.cpp's "default" has no tokenizer.json form here.
Added tokens: "special": true ones are CONTROL tokens (matched by encode only with
special=True), "special": false ones USER_DEFINED (always matched), as Hugging Face treats them
with split_special_tokens=True.
"""
from __future__ import annotations

import json
import os

from ..jsonfile import load_json
from ..limits import MAX_JSON_DEPTH, TOKENIZER_JSON_BYTES
from .bpe import Tokenizer
from .special_tokens import CONTROL, NORMAL, USER_DEFINED

__all__ = ["tokenizer_to_dict", "save_tokenizer_json", "tokenizer_from_file", "tokenizer_from_dict"]

# At most this many JSON values (keys included) in a tokenizer.json: a vocabulary entry is ~2,
# a merge 1-3, so this is room for ~1M tokens (Gemma 3's 262,144-token file holds ~2M values).
TOKENIZER_JSON_VALUES = 4_194_304

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}


def _pre_tokenizer_json(name: str) -> dict:
    if name == "gpt-2":
        return dict(_BYTE_LEVEL)
    if name == "smollm":
        return {"type": "Sequence", "pretokenizers": [dict(_DIGITS), dict(_BYTE_LEVEL)]}
    raise ValueError(f"pre-tokenizer {name!r} has no tokenizer.json form in tinyinfer "
                     f"(only 'gpt-2' and 'smollm' do)")


def tokenizer_to_dict(tok: Tokenizer) -> dict:
    """The tokenizer as a Hugging Face tokenizer.json structure."""
    # Added tokens are listed in the model vocab as well as in added_tokens, as in GPT-2's own
    # file and in what Hugging Face's trainer writes.
    vocab = {tok.id_to_token(i): i for i in range(tok.vocab_size)}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": tok.token_type(i) != USER_DEFINED}
            for s, i in tok.special_tokens.items()
        ],
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer_json(tok.pretokenizer),
        "post_processor": dict(_BYTE_LEVEL),
        "decoder": dict(_BYTE_LEVEL),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": tok.ignore_merges,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in tok.merges],
        },
    }


def save_tokenizer_json(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write a tokenizer.json that Hugging Face `tokenizers` (and tokenizer_from_file) can load."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tokenizer_to_dict(tok), f, ensure_ascii=False, indent=2)
        f.write("\n")


def tokenizer_from_file(path: str | os.PathLike) -> Tokenizer:
    """Read a byte-level BPE tokenizer.json (e.g. GPT-2's own).

    Only plain JSON is parsed, through tinyinfer/jsonfile.py: bounded in size, nesting depth and
    number of values before it is parsed; nothing is executed or unpickled."""
    data = load_json(path, what=str(path), max_bytes=TOKENIZER_JSON_BYTES, max_depth=MAX_JSON_DEPTH,
                     max_values=TOKENIZER_JSON_VALUES)
    return tokenizer_from_dict(data, source=str(path))


def _pretokenizer_name(pre, unsupported) -> str:
    """tokenizer.json's pre_tokenizer object -> llama.cpp's name for the same splitting."""
    def byte_level(p) -> bool:
        if not isinstance(p, dict) or p.get("type") != "ByteLevel":
            return False
        if p.get("add_prefix_space", False) or not p.get("use_regex", True):
            raise unsupported("ByteLevel pre_tokenizer option (need add_prefix_space=false, use_regex=true)")
        return True

    if byte_level(pre):
        return "gpt-2"
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers")
        if (isinstance(parts, list) and len(parts) == 2 and isinstance(parts[0], dict)
                and parts[0].get("type") == "Digits" and parts[0].get("individual_digits") is True
                and byte_level(parts[1])):
            return "smollm"
        raise unsupported("pre_tokenizer Sequence (only [Digits(individual_digits=true), ByteLevel])")
    raise unsupported(f"pre_tokenizer {pre.get('type') if isinstance(pre, dict) else pre!r} "
                      f"(only 'ByteLevel', or Digits then ByteLevel)")


def tokenizer_from_dict(data: dict, source: str = "tokenizer.json") -> Tokenizer:
    """A Tokenizer from a parsed tokenizer.json; ValueError naming anything not supported."""
    def unsupported(what: str) -> ValueError:
        return ValueError(f"{source}: unsupported {what}; tinyinfer.Tokenizer reads only byte-level BPE "
                          "(ByteLevel pre-tokenizer and decoder, BPE model, no normalizer)")

    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise unsupported("file layout: no 'model' object")
    model = data["model"]
    if model.get("type", "BPE" if "merges" in model else None) != "BPE":
        raise unsupported(f"model type {model.get('type')!r} (only 'BPE')")
    if data.get("normalizer") is not None:
        normalizer = data["normalizer"]
        raise unsupported(f"normalizer {normalizer.get('type') if isinstance(normalizer, dict) else normalizer!r} "
                          f"(must be null)")
    pretokenizer = _pretokenizer_name(data.get("pre_tokenizer") or {}, unsupported)
    decoder = data.get("decoder")
    if decoder is not None and (not isinstance(decoder, dict) or decoder.get("type") != "ByteLevel"):
        raise unsupported(f"decoder {decoder.get('type') if isinstance(decoder, dict) else decoder!r} (only 'ByteLevel')")
    post = data.get("post_processor")
    if post is not None and (not isinstance(post, dict) or post.get("type") != "ByteLevel"):
        raise unsupported(f"post_processor {post.get('type') if isinstance(post, dict) else post!r} "
                          f"(only 'ByteLevel' or null; others add tokens)")
    for key in ("truncation", "padding"):
        if data.get(key) is not None:
            raise unsupported(f"{key} setting (must be null)")
    if model.get("dropout") not in (None, 0, 0.0):
        raise unsupported(f"BPE dropout {model['dropout']!r} (encoding would be random)")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise unsupported(f"BPE {key} {model[key]!r}")

    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise unsupported("model.vocab (must be a {token: id} object)")
    merges = []
    for m in model.get("merges", []):
        if isinstance(m, str):               # legacy form "Ġ t"
            parts = m.split(" ")
        else:                                # newer form ["Ġ", "t"]
            parts = list(m) if isinstance(m, list) else [m]
        if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"{source}: malformed merge {m!r}; expected 'a b' or ['a', 'b']")
        merges.append((parts[0], parts[1]))

    specials: dict[str, int] = {}
    user_defined: set[int] = set()
    added = data.get("added_tokens", [])
    if not isinstance(added, list) or not all(isinstance(tok, dict) for tok in added):
        raise unsupported("added_tokens (must be a list of objects)")
    for tok in added:
        if tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
            raise unsupported(f"added token option on {tok.get('content')!r} (lstrip/rstrip/single_word)")
        content, token_id = tok.get("content"), tok.get("id")
        if not isinstance(content, str) or isinstance(token_id, bool) or not isinstance(token_id, int):
            raise ValueError(f"{source}: added token {tok!r} needs a str 'content' and an int 'id'")
        if content:
            specials[content] = token_id
            if tok.get("special") is False:
                user_defined.add(token_id)
    token_types = None
    if user_defined:
        n = len(set(vocab.values()) | set(specials.values()))
        token_types = [NORMAL] * n
        for i in specials.values():
            if 0 <= i < n:
                token_types[i] = USER_DEFINED if i in user_defined else CONTROL
    return Tokenizer(vocab, merges, specials, ignore_merges=bool(model.get("ignore_merges", False)),
                     token_types=token_types, pretokenizer=pretokenizer)

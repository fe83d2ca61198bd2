"""The tokenizer inside a GGUF file: the tokenizer.ggml.* metadata keys, in and out.

Lesson: lessons/02-tokenizer.py (and lessons/10-formats.py for the rest of the file)

A GGUF file carries its tokenizer as metadata, the way llama.cpp reads it (src/llama-vocab.cpp):

    tokenizer.ggml.model            "gpt2": byte-level BPE (the only model tinyinfer reads;
                                    "none" / "no_vocab": no tokenizer, ids in and logits out)
    tokenizer.ggml.pre              the pre-tokenizer: "gpt-2", "smollm", "default", ...
                                    (tinyinfer/tokenizer/pretokenizers.py)
    tokenizer.ggml.tokens           one string per id, normal tokens in GPT-2's byte form ("Ġthe")
    tokenizer.ggml.token_type       one int32 per id: NORMAL 1, CONTROL 3, USER_DEFINED 4,
                                    UNUSED 5, ... (tinyinfer/tokenizer/special_tokens.py)
    tokenizer.ggml.merges           "Ġ t" strings, highest priority first
    tokenizer.ggml.bos_token_id     special ids (also eos, eot, eom, unknown, padding, ...)
    tokenizer.ggml.add_bos_token    whether a prompt should start with BOS
    tokenizer.chat_template         the Jinja chat template (tinyinfer/tokenizer/chat.py)

from_gguf_metadata turns those keys into a Tokenizer; to_gguf_metadata writes them back.
"""
from __future__ import annotations

import warnings

import numpy as np

from .bpe import SPECIAL_ID_ROLES, Tokenizer
from .pretokenizers import PRETOKENIZERS
from .special_tokens import CONTROL, END_OF_GENERATION_TEXTS, NORMAL, ROLE_TEXTS, TOKEN_TYPE_NAMES, UNUSED

__all__ = ["from_gguf_metadata", "to_gguf_metadata", "TokenizerMetadataError"]

_KEY = "tokenizer.ggml."
# Older files name three fill-in-the-middle ids under other keys; llama.cpp reads both.
_DEPRECATED_ROLE_KEYS = {"fim_pre": "prefix_token_id", "fim_suf": "suffix_token_id", "fim_mid": "middle_token_id"}


class TokenizerMetadataError(ValueError):
    """GGUF tokenizer metadata that is malformed or describes a tokenizer tinyinfer does not implement."""


def _list_of_str(meta: dict, key: str, source: str) -> list[str]:
    value = meta.get(key)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise TokenizerMetadataError(f"{source}: {key} must be an array of strings, got "
                                     f"{type(value).__name__ if value is not None else 'nothing'}")
    return value


def _split_merge(merge: str, rank: int, source: str) -> tuple[str, str]:
    """"Ġ t" -> ("Ġ", "t"). llama.cpp cuts at the first space after the first character."""
    cut = merge.find(" ", 1)
    if cut < 0:
        raise TokenizerMetadataError(f"{source}: tokenizer.ggml.merges[{rank}] is {merge!r}; "
                                     f"expected two tokens separated by a space")
    return merge[:cut], merge[cut + 1:]


def _control_by_text(tokens: list[str], types: list[int], special_ids: dict[str, int]) -> None:
    """llama.cpp's rules by text (special_tokens.py): end-of-generation tokens, and the tokens it
    gives a role the file does not name, are CONTROL whatever tokenizer.ggml.token_type says."""
    texts = set(END_OF_GENERATION_TEXTS)
    for role, role_texts in ROLE_TEXTS.items():
        if role not in special_ids:
            texts.update(role_texts)
    for i, token in enumerate(tokens):
        if token in texts:
            types[i] = CONTROL


def from_gguf_metadata(meta: dict, source: str = "GGUF") -> Tokenizer | None:
    """The Tokenizer a GGUF file's metadata describes, or None if the file has no tokenizer.

    Raises TokenizerMetadataError (a ValueError) naming the key when the metadata is malformed,
    or when it asks for something tinyinfer does not implement (a tokenizer model other than
    "gpt2", a pre-tokenizer not in pretokenizers.PRETOKENIZERS): never a silent fallback that
    would encode text to plausible but wrong ids.
    """
    model = meta.get(_KEY + "model")
    if model in (None, "none", "no_vocab"):
        return None
    if model != "gpt2":
        raise TokenizerMetadataError(f"{source}: tokenizer.ggml.model is {model!r}; tinyinfer reads only 'gpt2' "
                                     f"(byte-level BPE), not SentencePiece ('llama'), WordPiece ('bert') or others")
    pre = meta.get(_KEY + "pre")
    if pre is None:
        # llama.cpp's own choice for a file that names no pre-tokenizer (with the same warning).
        warnings.warn(f"{source}: no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer, "
                      f"which may not be the one the model was trained with", stacklevel=2)
        pre = "default"
    if pre not in PRETOKENIZERS:
        raise TokenizerMetadataError(f"{source}: tokenizer.ggml.pre is {pre!r}, a pre-tokenizer tinyinfer does not "
                                     f"implement (it knows {', '.join(map(repr, PRETOKENIZERS))}); encoding with "
                                     f"another one would give wrong ids")

    tokens = _list_of_str(meta, _KEY + "tokens", source)
    types = meta.get(_KEY + "token_type")
    if types is None:
        types = [NORMAL] * len(tokens)
    types = np.asarray(types)
    if types.ndim != 1 or len(types) != len(tokens) or not np.issubdtype(types.dtype, np.integer):
        raise TokenizerMetadataError(f"{source}: tokenizer.ggml.token_type must hold one integer per token "
                                     f"({len(tokens)}), got {types.dtype} array of shape {types.shape}")
    types = types.tolist()
    bad = next((i for i, t in enumerate(types) if t not in TOKEN_TYPE_NAMES), None)
    if bad is not None:
        raise TokenizerMetadataError(f"{source}: tokenizer.ggml.token_type[{bad}] is {types[bad]} (token "
                                     f"{tokens[bad]!r}); known types are {TOKEN_TYPE_NAMES}")

    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if not token:
            raise TokenizerMetadataError(f"{source}: tokenizer.ggml.tokens[{i}] is empty")
        if vocab.setdefault(token, i) != i:
            raise TokenizerMetadataError(f"{source}: token {token!r} appears twice in tokenizer.ggml.tokens "
                                         f"(ids {vocab[token]} and {i}); each token must be unique")
    merges = [_split_merge(m, rank, source)
              for rank, m in enumerate(_list_of_str(meta, _KEY + "merges", source) if _KEY + "merges" in meta else [])]

    special_ids = {}
    for role, key in SPECIAL_ID_ROLES.items():
        for key in (key, _DEPRECATED_ROLE_KEYS.get(role)):
            value = meta.get(_KEY + key) if key else None
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < len(tokens):
                raise TokenizerMetadataError(f"{source}: tokenizer.ggml.{key} is {value!r}; expected a token id "
                                             f"in 0..{len(tokens) - 1}")
            special_ids[role] = int(value)
    _control_by_text(tokens, types, special_ids)
    add_bos = meta.get(_KEY + "add_bos_token", False)
    if not isinstance(add_bos, (bool, np.bool_)):
        raise TokenizerMetadataError(f"{source}: tokenizer.ggml.add_bos_token must be a bool, got {add_bos!r}")
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise TokenizerMetadataError(f"{source}: tokenizer.chat_template must be a string, got {type(template).__name__}")
    try:
        return Tokenizer(vocab, merges, token_types=types, pretokenizer=pre, special_ids=special_ids,
                         add_bos=bool(add_bos), chat_template=template)
    except (ValueError, TypeError) as e:
        raise TokenizerMetadataError(f"{source}: its tokenizer is not a byte-level BPE tinyinfer can use: {e}") from None


def to_gguf_metadata(tokenizer: Tokenizer | None, vocab_size: int) -> dict:
    """tokenizer.ggml.* keys for `tokenizer`, as llama.cpp's "gpt2" model; the inverse of from_gguf_metadata.

    Tokens are written in GPT-2's printable byte form ("Ġthe"), as tokenizer.json has them,
    with their types (special tokens CONTROL). If the embedding has more rows (vocab_size) than
    the tokenizer has tokens, the rest are padding tokens "[PAD<id>]" of type UNUSED
    (convert_hf_to_gguf.py does the same): llama.cpp needs exactly one token per embedding row.
    A tokenizer of None gives llama.cpp's "none" vocabulary: ids in, logits out, no text.
    """
    if tokenizer is None:
        return {_KEY + "model": "none"}
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding only "
                         f"{vocab_size} rows; expected at most as many tokens as rows")
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    types = [tokenizer.token_type(i) for i in range(tokenizer.vocab_size)]
    for i in range(tokenizer.vocab_size, vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
    meta = {
        _KEY + "model": "gpt2",
        _KEY + "pre": tokenizer.pretokenizer,
        _KEY + "tokens": tokens,
        _KEY + "token_type": np.array(types, dtype=np.int32),
        _KEY + "merges": [f"{a} {b}" for a, b in tokenizer.merges],
        # Say it explicitly either way, or llama.cpp falls back to its own default.
        _KEY + "add_bos_token": tokenizer.add_bos,
        _KEY + "add_eos_token": False,
    }
    ids = tokenizer.special_ids
    eos = tokenizer.eos_id
    if eos is not None:
        # GPT-2 uses <|endoftext|> for both. Without these keys llama.cpp would assume id 11.
        ids.setdefault("bos", eos)
        ids.setdefault("eos", eos)
    for role, key in SPECIAL_ID_ROLES.items():   # bos, eos first, in the order llama.cpp lists them
        if role in ids:
            meta[_KEY + key] = ids[role]
    if tokenizer.chat_template is not None:
        meta["tokenizer.chat_template"] = tokenizer.chat_template
    return meta

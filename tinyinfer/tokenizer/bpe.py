"""The Tokenizer: byte-level BPE, encode text to ids and decode ids to text.

Lesson: lessons/02-tokenizer.py

encode(text) runs the four steps of the package docstring (tinyinfer/tokenizer/__init__.py):
special tokens cut out (special_tokens.py), pre-tokens (pretokenizers.py), each pre-token's
bytes (byte_level.py) merged (merges.py), with a cache of pre-tokens already seen (cache.py).
decode(ids) looks up each id's bytes and joins them.

A Tokenizer is built by Tokenizer.train (training.py), from a Hugging Face tokenizer.json
(Tokenizer.from_file, hf_json.py) or from a GGUF file's metadata (gguf_vocab.py).
"""
from __future__ import annotations

import operator
import os
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from .byte_level import bytes_to_token_string, bytes_to_unicode, token_string_to_bytes
from .cache import DEFAULT_CACHE_BYTES, PieceCache
from .merges import LONG_PIECE, MergeTable, apply_merges, apply_merges_kernel
from .pretokenizers import get_pretokenizer
from .special_tokens import (BYTE, CONTROL, END_OF_GENERATION_ROLES, END_OF_GENERATION_TEXTS, NORMAL, ROLE_TEXTS,
                             TOKEN_TYPE_NAMES, UNKNOWN, UNUSED, USER_DEFINED, atomic_order, split_on_special)

__all__ = ["Tokenizer", "DEFAULT_SPECIAL_TOKENS", "SPECIAL_ID_ROLES"]

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>",)

# The roles a special id can have, and the GGUF key that names each (tokenizer.ggml.<key>).
SPECIAL_ID_ROLES = {"bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id",
                    "eom": "eom_token_id", "unk": "unknown_token_id", "pad": "padding_token_id",
                    "sep": "seperator_token_id", "mask": "mask_token_id",   # "seperator": GGUF's spelling
                    "fim_pre": "fim_pre_token_id", "fim_suf": "fim_suf_token_id", "fim_mid": "fim_mid_token_id",
                    "fim_pad": "fim_pad_token_id", "fim_rep": "fim_rep_token_id", "fim_sep": "fim_sep_token_id"}

MISSING_BYTE = -1   # stands for a byte the vocabulary has no token for; dropped from the ids
_ATOMIC = (CONTROL, UNKNOWN, USER_DEFINED)   # types cut out of text before pre-tokenizing
_RENDERED_ONLY_IF_SPECIAL = (CONTROL, UNKNOWN)   # decode(special=False) leaves these out


class Tokenizer:
    """A byte-level BPE tokenizer: `encode` text to ids, `decode` ids to text.

    Build one with `Tokenizer.train(texts, vocab_size)`, `Tokenizer.from_file("tokenizer.json")`
    or `from_gguf_metadata(meta)`. The constructor takes the raw tables, as stored in
    tokenizer.json and GGUF:

        vocab           {token_string: id}; normal tokens in GPT-2's printable byte form
                        ("Ġthe"), special ones as their text ("<|im_end|>"); should contain
                        all 256 byte tokens (bytes without one are dropped: missing_bytes)
        merges          [(left, right), ...]; index in the list = rank (priority)
        special_tokens  {content: id}, cut out of the text before BPE runs (CONTROL tokens,
                        unless token_types says otherwise)
        ignore_merges   Hugging Face option: a pre-token that is itself in the vocab is
                        emitted whole, without replaying merges

    and, keyword-only, what a GGUF file adds:

        token_types     one llama.cpp token type per id (special_tokens.py: NORMAL, CONTROL,
                        USER_DEFINED, ...); default NORMAL, CONTROL for special_tokens
        pretokenizer    llama.cpp's tokenizer.ggml.pre name: "gpt-2", "smollm", "default"
        special_ids     {role: id}, roles "bos", "eos", "eot", "eom", "unk", "pad", "sep", "mask",
                        "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep"
        add_bos         whether the model expects a BOS token before a prompt (encode never
                        adds one; prompt builders read this)
        chat_template   the model's Jinja chat template (tokenizer.chat_template), or None
        cache_bytes     memory budget of the pre-token cache (cache.py)
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                 special_tokens: dict[str, int] | None = None, ignore_merges: bool = False, *,
                 token_types: Sequence[int] | None = None, pretokenizer: str = "gpt-2",
                 special_ids: dict[str, int] | None = None, add_bos: bool = False,
                 chat_template: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES):
        special_tokens = dict(special_tokens or {})
        self._vocab = dict(vocab)
        merge_strings = [tuple(m) for m in merges]
        self._ignore_merges = bool(ignore_merges)
        self._id_to_str = self._id_table(self._vocab, special_tokens)
        self._types = self._type_table(special_tokens, token_types)
        self._id_to_bytes = [self._token_bytes(i) for i in range(len(self._id_to_str))]
        # decode(special=False): control and unknown tokens render as nothing (llama.cpp's
        # token_to_piece with special=false).
        self._id_to_text_bytes = [b"" if t in _RENDERED_ONLY_IF_SPECIAL else data
                                  for t, data in zip(self._types, self._id_to_bytes)]

        # The token of each byte value. A vocabulary may lack some: SmolLM2's has no token for
        # 21 bytes (6 ASCII control characters and 15 that UTF-8 never or hardly uses).
        # llama.cpp then drops those bytes from the ids, and so do we: MISSING_BYTE stays in
        # place while merging (so "?\x04?" gives "?", "?", not "??") and is removed at the end.
        # (Hugging Face drops them before merging, so it can give "??".) missing_bytes lists them.
        # A vocabulary lacking a printable ASCII byte is refused: that is a broken file.
        byte_chars = bytes_to_unicode()
        self._byte_ids = [self._vocab.get(byte_chars[b], MISSING_BYTE) for b in range(256)]
        self._missing_bytes = bytes(b for b in range(256) if self._byte_ids[b] == MISSING_BYTE)
        self._byte_id_array = np.array(self._byte_ids, dtype=np.int64)   # (256,) for long pre-tokens
        # The cache holds ids of long pre-tokens too; making them these shared int objects (not
        # fresh ones from a NumPy array) keeps each cached id at 8 bytes instead of 36.
        self._id_objects = list(range(len(self._id_to_str)))
        broken = [f"{b:#04x} ({byte_chars[b]!r})" for b in self._missing_bytes if 0x20 <= b < 0x7F]
        if broken:
            raise ValueError(f"unsupported vocab: no token for byte(s) {', '.join(broken[:5])}"
                             f"{' ...' if len(broken) > 5 else ''}; a byte-level BPE vocab needs a token "
                             f"for every printable ASCII byte")

        # (left_id, right_id) -> (rank, merged_id). A pair listed twice keeps its later
        # rank, because later dict assignments overwrite earlier ones, as in Hugging Face.
        pairs: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(merge_strings):
            for part in (left, right, left + right):
                if part not in self._vocab:
                    raise ValueError(f"merge #{rank} ({left!r}, {right!r}) uses {part!r}, which is not in the vocab")
            pairs[(self._vocab[left], self._vocab[right])] = (rank, self._vocab[left + right])
        self._merges = MergeTable(pairs, len(self._id_to_str))
        # The merge list itself, kept as (left id, right id) in rank order: 8 bytes a merge instead of
        # two strings and a tuple (~150 bytes; ~7 MB for SmolLM2's 48,900). `merges` spells them out.
        self._merge_ids = np.array([(self._vocab[a], self._vocab[b]) for a, b in merge_strings],
                                   dtype=np.int32).reshape(-1, 2)
        del merge_strings

        atomic = [(self._id_to_str[i], i) for i, t in enumerate(self._types) if t in _ATOMIC]
        self._atomic_special = atomic_order(atomic)                                   # special=True
        self._atomic_user = [(s, i) for s, i in self._atomic_special if self._types[i] == USER_DEFINED]
        self._special_by_text = {s: i for s, i in sorted(atomic, key=lambda t: t[1])}

        self._pretokenizer = pretokenizer
        self._split = get_pretokenizer(pretokenizer)    # unknown name: ValueError listing the known
        self._special_ids = self._check_special_ids(special_ids or {})
        self._add_bos = bool(add_bos)
        if chat_template is not None and not isinstance(chat_template, str):
            raise TypeError(f"chat_template must be a str or None, got {type(chat_template).__name__}")
        self._chat_template = chat_template
        self._cache = PieceCache(cache_bytes)

    # ---- construction helpers --------------------------------------------------------

    @staticmethod
    def _id_table(vocab: dict[str, int], special_tokens: dict[str, int]) -> list[str]:
        """id -> token string. Specials may or may not also be in the model vocab (GPT-2's file
        lists <|endoftext|> in both); either way they get one id."""
        id_to_str: dict[int, str] = {}
        for table in (vocab, special_tokens):
            for token, i in table.items():
                if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                    raise ValueError(f"token {token!r} has invalid id {i!r}; ids must be ints >= 0")
                if id_to_str.get(i, token) != token:
                    raise ValueError(f"id {i} is used by two tokens: {id_to_str[i]!r} and {token!r}")
                id_to_str[i] = token
        n = len(id_to_str)
        if n and max(id_to_str) != n - 1:
            missing = min(set(range(n)) - id_to_str.keys())
            raise ValueError(f"token ids must be contiguous 0..{n - 1}, but id {missing} is missing")
        return [id_to_str[i] for i in range(n)]

    def _type_table(self, special_tokens: dict[str, int], token_types) -> list[int]:
        n = len(self._id_to_str)
        if token_types is None:
            types = [NORMAL] * n
            for i in special_tokens.values():
                types[i] = CONTROL
            return types
        types = [int(t) for t in token_types]
        if len(types) != n:
            raise ValueError(f"token_types has {len(types)} entries but the vocab has {n} tokens; "
                             f"expected one type per id")
        for i, t in enumerate(types):
            if t not in TOKEN_TYPE_NAMES:
                raise ValueError(f"token {i} ({self._id_to_str[i]!r}) has type {t}; expected one of "
                                 f"{', '.join(f'{k} ({v})' for k, v in TOKEN_TYPE_NAMES.items())}")
        for token, i in special_tokens.items():
            if types[i] not in _ATOMIC:
                raise ValueError(f"special token {token!r} (id {i}) has type {TOKEN_TYPE_NAMES[types[i]]} in "
                                 f"token_types; a special token must be CONTROL, UNKNOWN or USER_DEFINED")
        return types

    def _token_bytes(self, i: int) -> bytes:
        """The bytes id i stands for: normal tokens are in GPT-2's printable form; special
        and user-defined tokens are their own text; an unused token is nothing."""
        token, kind = self._id_to_str[i], self._types[i]
        if kind == NORMAL:
            return token_string_to_bytes(token)
        if kind == UNUSED:
            return b""
        if kind == BYTE:   # "<0x0A>"
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                try:
                    return bytes([int(token[3:5], 16)])
                except ValueError:
                    pass
            raise ValueError(f"token {i} {token!r} has type BYTE but is not written <0xXX>")
        return token.encode("utf-8")

    def _check_special_ids(self, special_ids: dict[str, int]) -> dict[str, int]:
        checked = {}
        for role, i in special_ids.items():
            if role not in SPECIAL_ID_ROLES:
                raise ValueError(f"special_ids has unknown role {role!r}; expected one of {', '.join(SPECIAL_ID_ROLES)}")
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self._id_to_str):
                raise ValueError(f"special_ids[{role!r}] is {i!r}; expected a token id in 0..{len(self._id_to_str) - 1}")
            checked[role] = i
        return checked

    # ---- training --------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, progress: bool = True) -> "Tokenizer":
        """Learn a vocabulary of `vocab_size` tokens (256 bytes + merges + specials) with
        GPT-2's pre-tokenizer (tinyinfer/tokenizer/training.py).

        `texts` is an iterable of documents (str). Special tokens found inside them are
        cut out first, so "<|endoftext|>" never gets merged into ordinary tokens.
        If the corpus runs out of pairs to merge, the vocab ends up smaller than asked
        and a warning says so.
        """
        from .training import train_vocab

        vocab, merges, specials = train_vocab(texts, vocab_size, special_tokens, progress)
        return cls(vocab, merges, specials)

    # ---- encoding --------------------------------------------------------------------

    def _encode_pretoken(self, piece: str) -> tuple[int, ...] | list[int]:
        """One pre-token -> its ids (and into the cache, unless it is too long to keep)."""
        data = piece.encode("utf-8")
        whole = self._vocab.get(bytes_to_token_string(data)) if self._ignore_merges else None
        if whole is not None:
            ids = (whole,)
        elif len(data) >= LONG_PIECE:
            symbols = self._byte_id_array[np.frombuffer(data, np.uint8)]       # (n,) int64, a copy
            merged = apply_merges_kernel(symbols, self._merges)
            if self._missing_bytes:
                merged = merged[merged != MISSING_BYTE]
            if len(piece) > self._cache.max_piece_chars:
                return merged.tolist()                                       # too long to cache
            ids = tuple(map(self._id_objects.__getitem__, merged.tolist()))  # the shared int objects
        else:
            byte_ids = self._byte_ids
            ids = tuple(apply_merges([byte_ids[b] for b in data], self._merges.pairs))
            if self._missing_bytes and MISSING_BYTE in ids:
                ids = tuple(i for i in ids if i != MISSING_BYTE)
        self._cache.put(piece, ids)
        return ids

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        """Text with no special tokens in it: pre-tokenize, then BPE each pre-token."""
        cached = self._cache.entries.get
        encode_pretoken = self._encode_pretoken
        for piece in self._split(text):
            ids = cached(piece)
            if ids is None:
                ids = encode_pretoken(piece)
            out += ids

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Text -> token ids.

        special=True (the default, as in Hugging Face): special tokens written in the text
        ("<|endoftext|>", "<|im_start|>") become their single id, as a chat template needs.
        special=False: only user-defined tokens do; "<|im_end|>" is encoded as the plain text
        it is, as llama.cpp does with parse_special=false. Use it for text from users, so
        that a message cannot forge the structure of a conversation.

        A str holding a lone surrogate (e.g. "\\ud800", which JSON's "\\ud800" escape can make)
        is not text: it has no UTF-8 bytes, so it is refused with a ValueError.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode(text) needs text to be a str, got {type(text).__name__}"
                            + ("; decode bytes first, e.g. data.decode('utf-8')" if isinstance(text, (bytes, bytearray)) else ""))
        if not isinstance(special, bool):
            raise TypeError(f"encode(special=...) must be True or False, got {special!r}")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"text has a lone surrogate U+{ord(text[e.start]):04X} at index {e.start}: it is "
                                 f"half of a UTF-16 pair, not a character, and has no UTF-8 encoding") from None
        out: list[int] = []
        atomic = self._atomic_special if special else self._atomic_user
        if not atomic:
            self._encode_ordinary(text, out)
            return out
        for part in split_on_special(text, atomic):
            if isinstance(part, int):
                out.append(part)
            else:
                self._encode_ordinary(part, out)
        return out

    def encode_batch(self, texts: Iterable[str], progress: bool = False, special: bool = True) -> list[list[int]]:
        """encode() each text; shares the pre-token cache, so it is fast on similar texts."""
        if isinstance(texts, str):
            raise TypeError("encode_batch(texts) needs an iterable of str, not a single str; use encode(text)")
        return [self.encode(t, special=special) for t in tqdm(texts, desc="encoding", unit="text", disable=not progress)]

    # ---- decoding --------------------------------------------------------------------

    def _check_id(self, i) -> int:
        try:
            i = operator.index(i)                 # accepts int and numpy integers, not floats
        except TypeError:
            raise TypeError(f"token ids must be ints, got {i!r} ({type(i).__name__})") from None
        if not 0 <= i < len(self._id_to_str):
            raise ValueError(f"token id {i} is out of range for vocab size {len(self._id_to_str)} "
                             f"(valid ids are 0..{len(self._id_to_str) - 1})")
        return i

    def decode_bytes(self, ids: Iterable[int], special: bool = True) -> bytes:
        """Ids -> the exact bytes they stand for: what llama.cpp's llama_token_to_piece gives,
        token by token. A perfect round trip, decode_bytes(encode(s)) == s.encode("utf-8"),
        whenever the vocabulary has a token for every byte of s (see missing_bytes).
        special=False leaves control tokens out ("<|im_end|>" renders as nothing)."""
        table = self._id_to_bytes if special else self._id_to_text_bytes
        return b"".join([table[i] for i in self._checked_ids(ids)])

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        """ids as a list of valid Python ints: checked all at once with NumPy (fast), or one by
        one with _check_id when something is wrong (for an error that names the bad id)."""
        ids = ids if isinstance(ids, np.ndarray) else list(ids)
        try:
            array = np.asarray(ids)
        except (OverflowError, ValueError, TypeError):
            array = None
        if (array is not None and array.ndim == 1 and array.dtype.kind in "iu"
                and (array.size == 0 or (array.min() >= 0 and array.max() < len(self._id_to_str)))):
            return array.tolist()
        return [self._check_id(i) for i in ids]

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """Ids -> text. decode(encode(s)) == s for every str s (with special=True or False),
        when the vocabulary has a token for every byte (see missing_bytes).

        A token can end in the middle of a multi-byte character (a model may emit half an
        emoji); such broken bytes become U+FFFD "�", as in Hugging Face. decode_bytes gives
        the raw bytes, as llama.cpp does. Unlike Hugging Face's default, special tokens are
        kept unless special=False."""
        return self.decode_bytes(ids, special).decode("utf-8", errors="replace")

    # ---- lookups ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (an embedding table needs this many rows)."""
        return len(self._id_to_str)

    @property
    def special_tokens(self) -> dict[str, int]:
        """{content: id} of the tokens matched whole in text: control, unknown and user-defined."""
        return dict(self._special_by_text)

    @property
    def missing_bytes(self) -> bytes:
        """Byte values the vocabulary has no token for: encode drops them (as llama.cpp does), so
        decode(encode(s)) is s without them. Empty for a complete vocabulary."""
        return self._missing_bytes

    @property
    def special_ids(self) -> dict[str, int]:
        """{role: id} as the GGUF file named them: "bos", "eos", "unk", "pad", ..."""
        return dict(self._special_ids)

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sequence token, if the vocabulary names one."""
        return self._special_ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence token: the one the vocabulary names (GGUF's eos_token_id,
        "<|im_end|>" for SmolLM2), else "<|endoftext|>", GPT-2's end of text, if present."""
        eos = self._special_ids.get("eos")
        return eos if eos is not None else self.token_to_id("<|endoftext|>")

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end a generation: llama.cpp's end-of-generation set (special_tokens.py says how
        it is found). For SmolLM2: {0, 2, 4}, <|endoftext|>, <|im_end|> (its eos) and <reponame>;
        for tinyinfer's GPT-2-style tokenizers, <|endoftext|>."""
        ids = {self._special_ids[role] for role in END_OF_GENERATION_ROLES if role in self._special_ids}
        texts = list(END_OF_GENERATION_TEXTS)
        for role in END_OF_GENERATION_ROLES:
            if role not in self._special_ids:        # a role the file does not name: found by its text
                texts += ROLE_TEXTS.get(role, ())
        for text in texts:
            i = self.token_to_id(text)
            if i is not None:
                ids.add(i)
        eos = self.eos_id
        if eos is not None:
            ids.add(eos)
        return frozenset(ids)

    @property
    def add_bos(self) -> bool:
        """Whether the model expects a BOS token before a prompt (GGUF's add_bos_token)."""
        return self._add_bos

    @property
    def pretokenizer(self) -> str:
        """llama.cpp's name of the pre-tokenizer: "gpt-2", "smollm" or "default"."""
        return self._pretokenizer

    @property
    def chat_template(self) -> str | None:
        """The model's chat template (Jinja source, as in tokenizer.chat_template), or None."""
        return self._chat_template

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as the prompt text the model was trained on (tinyinfer/tokenizer/chat.py).

        messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]. Encode the
        result with encode(prompt, special=True), so "<|im_start|>" becomes its token."""
        from .chat import render_chat

        return render_chat(self._chat_template, messages, add_generation_prompt)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The conversation's prompt as ids, safely: the template's framing tokens ("<|im_start|>",
        "<|im_end|>") become their ids and the messages are encoded as plain text (special=False),
        so a message that contains "<|im_end|>" cannot close its own turn. When no message contains
        special-token text, the same ids as encode(apply_chat_template(messages), special=True)."""
        from .chat import ChatTemplateError, chat_segments

        ids: list[int] = []
        for text, special in chat_segments(self._chat_template, messages, add_generation_prompt):
            if special:
                token = self._special_by_text.get(text)
                if token is None:
                    raise ChatTemplateError(f"the chat template frames turns with {text!r}, which is not a "
                                            f"special token of this vocabulary")
                ids.append(token)
            else:
                ids += self.encode(text, special=False)
        return ids

    @property
    def merges(self) -> list[tuple[str, str]]:
        """Learned merges, highest priority first, as token strings ("Ġ", "t")."""
        vocab_str = {i: s for s, i in self._vocab.items()}  # the vocab's own spelling of each id
        return [(vocab_str[a], vocab_str[b]) for a, b in self._merge_ids.tolist()]

    @property
    def ignore_merges(self) -> bool:
        return self._ignore_merges

    def token_type(self, i: int) -> int:
        """llama.cpp's type of token i: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6."""
        return self._types[self._check_id(i)]

    def token_to_id(self, token: str) -> int | None:
        """"Ġthe" -> its id, or None if there is no such token (as in Hugging Face)."""
        return self._special_by_text.get(token, self._vocab.get(token))

    def id_to_token(self, i: int) -> str:
        """Id -> token string in GPT-2's printable byte form (e.g. "Ġthe")."""
        return self._id_to_str[self._check_id(i)]

    def __repr__(self) -> str:
        specials = self.special_tokens
        shown = dict(list(specials.items())[:4])
        more = f" +{len(specials) - 4} more" if len(specials) > 4 else ""
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merge_ids)}, "
                f"pretokenizer={self._pretokenizer!r}, special_tokens={shown}{more})")

    # ---- tokenizer.json --------------------------------------------------------------

    def to_dict(self) -> dict:
        """The tokenizer as a Hugging Face tokenizer.json structure (tinyinfer/tokenizer/hf_json.py)."""
        from .hf_json import tokenizer_to_dict

        return tokenizer_to_dict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write a tokenizer.json that Hugging Face `tokenizers` (and from_file) can load."""
        from .hf_json import save_tokenizer_json

        save_tokenizer_json(self, path)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a byte-level BPE tokenizer.json (e.g. GPT-2's own); see hf_json.py for what is accepted."""
        from .hf_json import tokenizer_from_file

        return tokenizer_from_file(path)

    @classmethod
    def from_dict(cls, data: dict, source: str = "tokenizer.json") -> "Tokenizer":
        """A Tokenizer from a parsed tokenizer.json (hf_json.py)."""
        from .hf_json import tokenizer_from_dict

        return tokenizer_from_dict(data, source)

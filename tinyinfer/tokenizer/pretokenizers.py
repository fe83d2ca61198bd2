"""Step 2 of byte-level BPE: cutting text into pre-tokens, the way llama.cpp's GGUF metadata asks.

Lesson: lessons/02-tokenizer.py

Before any merging, a pre-tokenizer cuts the text into pieces (words, numbers, punctuation,
whitespace). Merges never cross these borders, so " the" can become one token but "e t" never
will. Which cuts a model expects is part of the model: it was trained on text cut that way.
A GGUF file names its pre-tokenizer in `tokenizer.ggml.pre`, and llama.cpp (src/llama-vocab.cpp)
maps each name to a list of regular expressions. tinyinfer implements these:

    "gpt-2"    GPT-2's own regex (GPT2_SPLIT_PATTERN): contractions, letter runs, number runs,
               punctuation runs, each with at most one leading space, then whitespace.
               "x = 12345" -> "x", " =", " 12345"
    "smollm"   every digit alone first, then GPT-2's regex on what is between the digits
               (SmolLM, StarCoder). "x = 12345" -> "x", " =", " ", "1", "2", "3", "4", "5"
    "default"  what llama.cpp uses when a file names no pre-tokenizer: runs of punctuation
               first, then GPT-2's regex, then number runs, then ASCII digits in threes.

An unknown name is an error (get_pretokenizer), never a silent fallback to another splitter:
the ids would look plausible and be wrong.

Python's built-in `re` does all of it; we do not depend on the third-party `regex` package.
`re` has no \\p{L} / \\p{N}, so unicode_classes() builds those character classes once from
the Unicode database (see its docstring for the Unicode version).
"""
from __future__ import annotations

import bisect
import re
import unicodedata
from functools import lru_cache
from typing import Callable

__all__ = ["GPT2_SPLIT_PATTERN", "PRETOKENIZERS", "get_pretokenizer", "pretokenize", "gpt2_split",
           "smollm_split", "llama_default_split", "unicode_classes"]

# GPT-2's pre-tokenizer, exactly as OpenAI and Hugging Face write it. \p{L} means
# "any letter", \p{N} "any number", in any script.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Unicode's White_Space property, which is what \s means both in the regex engine Hugging Face
# uses (Oniguruma) and in llama.cpp's tables. We cannot use Python's \s: it also matches
# U+001C..U+001F (file/group/record/unit separators), which GPT-2 treats as punctuation. This
# list has been stable since Unicode 6.3 (when U+180E left it).
_WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                (0x3000, 0x3000)]

# Letters (L), numbers (N) and punctuation (P) that Unicode 15.0 and 15.1 added. Python 3.11's
# database is Unicode 14.0 and calls them unassigned; llama.cpp's tables are Unicode 15.1, so
# without these ranges such characters would split differently from llama.cpp.
_ADDED_IN_15 = {
    "L": [(0x1123F, 0x11240),   # Khojki
          (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33),   # Kawi
          (0x1342F, 0x1342F), (0x13441, 0x13446),   # Egyptian hieroglyphs
          (0x1B132, 0x1B132), (0x1B155, 0x1B155),   # small kana
          (0x1DF25, 0x1DF2A),   # Latin Extended-G
          (0x1E030, 0x1E06D),   # Cyrillic Extended-D (modifier letters)
          (0x1E4D0, 0x1E4EB),   # Nag Mundari
          (0x2B739, 0x2B739), (0x31350, 0x323AF),   # CJK Extension B addition, Extension H
          (0x2EBF0, 0x2EE5D)],  # CJK Extension I (15.1)
    "N": [(0x11F50, 0x11F59),   # Kawi digits
          (0x1D2C0, 0x1D2D3),   # Kaktovik numerals
          (0x1E4F0, 0x1E4F9)],  # Nag Mundari digits
    "P": [(0x11B00, 0x11B09),   # Devanagari Extended-A
          (0x11F43, 0x11F4F)],  # Kawi punctuation ("default" tells P apart; GPT-2's regex does not)
}


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort ranges and join those that touch or overlap: [(5, 9), (1, 4)] -> [(1, 9)]."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


@lru_cache(maxsize=None)
def unicode_classes() -> dict[str, list[tuple[int, int]]]:
    """The character classes the pre-tokenizers need, as sorted (first, last) code point ranges:

        "L"  letters      (general categories Lu Ll Lt Lm Lo)   what \\p{L} means
        "N"  numbers      (Nd Nl No)                            what \\p{N} means
        "P"  punctuation  (Pc Pd Ps Pe Pi Pf Po)                what \\p{P} means
        "s"  white space  (the White_Space property)            what \\s means

    Built by walking all 1.1 million code points once and asking `unicodedata.category` about
    each (about a second, so it is done lazily, the first time a pre-tokenizer is used, and
    cached). The categories come from the Unicode version built into Python
    (unicodedata.unidata_version: 14.0 in Python 3.11), plus the letters, numbers and punctuation
    added in 15.0 and 15.1 (_ADDED_IN_15), which is the version of llama.cpp's tables.
    tests/test_tokenizer_llamacpp.py compares the splits with llama.cpp's on every 53rd code point
    (with a step of 1 it covers all of them, and they agree too), tests/test_tokenizer.py with
    Hugging Face's regex engine. On a Python whose Unicode is newer than 15.1, code points added
    after 15.1 may split differently from llama.cpp.
    """
    found: dict[str, list[tuple[int, int]]] = {"L": [], "N": [], "P": []}
    for cp in range(0x110000):
        ranges = found.get(unicodedata.category(chr(cp))[0])
        if ranges is not None:
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)   # extend the current run
            else:
                ranges.append((cp, cp))
    for cls, added in _ADDED_IN_15.items():
        found[cls] = _merge_ranges(found[cls] + added)
    found["s"] = list(_WHITE_SPACE)
    return found


def _class_body(ranges: list[tuple[int, int]]) -> str:
    """Ranges -> the inside of a [...] character class, written with \\U escapes so the
    pattern stays plain ASCII and no character needs special-casing."""
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


# Speed. Python's `re` tests a character against a class of Basic Multilingual Plane characters
# (U+0000..U+FFFF) with one table lookup, but against ranges beyond U+FFFF one range at a time,
# and \p{L} has ~250 such ranges: every character that is *not* a letter pays for all of them.
# So the regexes hold only the BMP part of each class, and a character beyond U+FFFF (emoji,
# rare CJK, math letters) is first replaced by a BMP stand-in of the same class. The cuts are
# the same (the regexes only ask "which class?"), and the pieces are cut from the original text
# by their lengths. This makes GPT-2's regex ~5x faster on ordinary text.
_STAND_IN = {"L": "\u00aa", "N": "\u00b2", "P": "\u00a1", None: "\u00a6"}  # ª ² ¡ ¦: Lo No Po So
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


@lru_cache(maxsize=None)
def _bmp_classes() -> tuple[str, str, str, str]:
    """(L, N, P, s) class bodies restricted to U+0000..U+FFFF (the stand-ins are inside them)."""
    c = unicode_classes()
    bmp = {k: [(a, min(b, 0xFFFF)) for a, b in v if a <= 0xFFFF] for k, v in c.items()}
    return _class_body(bmp["L"]), _class_body(bmp["N"]), _class_body(bmp["P"]), _class_body(bmp["s"])


@lru_cache(maxsize=None)
def _astral_ranges() -> tuple[list[int], list[str]]:
    """Sorted range starts beyond U+FFFF, and the stand-in for each range (None: not L/N/P)."""
    bounds = sorted((a, b, cls) for cls in ("L", "N", "P") for a, b in unicode_classes()[cls] if b > 0xFFFF)
    starts, stand_ins, pos = [], [], 0x10000
    for a, b, cls in bounds:
        a = max(a, 0x10000)
        if a > pos:
            starts.append(pos)
            stand_ins.append(_STAND_IN[None])
        starts.append(a)
        stand_ins.append(_STAND_IN[cls])
        pos = b + 1
    starts.append(pos)
    stand_ins.append(_STAND_IN[None])
    return starts, stand_ins


@lru_cache(maxsize=65536)
def _stand_in(ch: str) -> str:
    starts, stand_ins = _astral_ranges()
    return stand_ins[bisect.bisect_right(starts, ord(ch)) - 1]


def _cut_like(text: str, pieces: list[str]) -> list[str]:
    """The pieces of `text` with the lengths of `pieces` (which cover a same-length stand-in text)."""
    out, pos = [], 0
    for piece in pieces:
        out.append(text[pos:pos + len(piece)])
        pos += len(piece)
    return out


def _split_with(split_bmp: Callable[[str], list[str]], text: str) -> list[str]:
    """Run a BMP-only splitter on text, with stand-ins for characters beyond U+FFFF if there are any."""
    if text.isascii() or not _ASTRAL.search(text):
        return split_bmp(text)
    return _cut_like(text, split_bmp(_ASTRAL.sub(lambda m: _stand_in(m.group()), text)))


@lru_cache(maxsize=None)
def gpt2_regex() -> re.Pattern:
    """GPT2_SPLIT_PATTERN compiled for Python's built-in `re`, with \\p{L}, \\p{N} and \\s spelled
    out as character classes (unicode_classes; only their BMP part, see _split_with)."""
    L, N, _, S = _bmp_classes()
    return re.compile(
        r"'s|'t|'re|'ve|'m|'ll|'d"
        rf"| ?[{L}]+"                 # ' ?\p{L}+'   words
        rf"| ?[{N}]+"                 # ' ?\p{N}+'   numbers
        rf"| ?[^{S}{L}{N}]+"          # ' ?[^\s\p{L}\p{N}]+'   punctuation
        rf"|[{S}]+(?![^{S}])"         # '\s+(?!\S)'  whitespace not before a word
        rf"|[{S}]+"                   # '\s+'        any remaining whitespace
    )


@lru_cache(maxsize=None)
def smollm_regex() -> re.Pattern:
    """llama.cpp's "smollm" splitting as ONE regex, so it costs what GPT-2's does.

    llama.cpp runs two passes: `\\p{N}` cuts every digit out on its own, then GPT-2's regex runs
    on each stretch between digits, as if each stretch were the whole text. One regex gives
    the same pieces:
      * `\\p{N}` comes first, so a digit is always a piece by itself, and ` ?\\p{N}+` is gone;
      * a stretch ends where a digit starts, and GPT-2's `\\s+(?!\\S)` sees the end of its text
        there: so whitespace before a digit is kept whole, `\\s+(?![^\\s\\p{N}])`;
      * letter and punctuation runs stop at digits by themselves.
    tests/test_tokenizer_pretokenizers.py checks this against the two-pass definition.
    """
    L, N, _, S = _bmp_classes()
    return re.compile(
        rf"[{N}]"                     # '\p{N}'      every digit alone
        r"|'s|'t|'re|'ve|'m|'ll|'d"
        rf"| ?[{L}]+"                 # ' ?\p{L}+'   words
        rf"| ?[^{S}{L}{N}]+"          # ' ?[^\s\p{L}\p{N}]+'   punctuation
        rf"|[{S}]+(?![^{S}{N}])"      # '\s+(?!\S)'  whitespace not before a word (a digit ends the stretch)
        rf"|[{S}]+"                   # '\s+'
    )


def gpt2_split(text: str) -> list[str]:
    """Cut text into GPT-2 pre-tokens: "Hello  world's" -> ["Hello", " ", " world", "'s"].

    Note how a run of spaces gives its *last* space to the next word: that is what
    `\\s+(?!\\S)` is for, so " world" looks the same wherever it appears.
    """
    return _split_with(gpt2_regex().findall, text)


def smollm_split(text: str) -> list[str]:
    """llama.cpp's "smollm" pre-tokenizer: digits one by one, GPT-2's regex between them.
    "x = 12345" -> ["x", " =", " ", "1", "2", "3", "4", "5"]."""
    return _split_with(smollm_regex().findall, text)


# ---------------------------------------------------------------------------------- "default"

def _split_stage(pieces: list[str], pattern: re.Pattern) -> list[str]:
    """One pass of llama.cpp's unicode_regex_split: inside each piece, every match of `pattern`
    becomes a piece and so does every stretch between matches."""
    out: list[str] = []
    for piece in pieces:
        start = 0
        for m in pattern.finditer(piece):
            if m.start() > start:
                out.append(piece[start:m.start()])
            out.append(m.group())
            start = m.end()
        if start < len(piece):
            out.append(piece[start:])
    return out


@lru_cache(maxsize=None)
def _default_stages() -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    _, N, P, _ = _bmp_classes()
    return (re.compile(rf"[{P}$+<=>^~|]+"),   # '[\p{P}\$\+<=>\^~\|]+'  punctuation (and some symbols)
            re.compile(rf"[{N}]+"),            # '\p{N}+'
            re.compile(r"[0-9][0-9][0-9]"))    # ASCII digits in threes


def llama_default_split(text: str) -> list[str]:
    """llama.cpp's "default" BPE pre-tokenizer, four passes, each cutting the pieces of the last:
    punctuation runs, GPT-2's regex, number runs, ASCII digits in threes.
    "x = 12345!" -> ["x", " ", "=", " ", "123", "45", "!"]."""
    return _split_with(_default_split_bmp, text)


def _default_split_bmp(text: str) -> list[str]:
    punct, numbers, triples = _default_stages()
    pieces = _split_stage([text], punct)
    pieces = [p for piece in pieces for p in gpt2_regex().findall(piece)]
    return _split_stage(_split_stage(pieces, numbers), triples)


# ---------------------------------------------------------------------------------- registry

# tokenizer.ggml.pre name -> splitter. llama.cpp maps more names onto these same splitters
# (e.g. "phi-2" onto GPT-2's, "starcoder" onto smollm's), sometimes with other settings that
# change encoding; a name is added here only after checking it against llama.cpp.
PRETOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "gpt-2": gpt2_split,
    "smollm": smollm_split,
    "default": llama_default_split,
}


def get_pretokenizer(name: str) -> Callable[[str], list[str]]:
    """The splitter llama.cpp uses for the `tokenizer.ggml.pre` value `name`."""
    try:
        return PRETOKENIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pre-tokenizer {name!r}: tinyinfer implements "
                         f"{', '.join(map(repr, PRETOKENIZERS))} (llama.cpp's tokenizer.ggml.pre names); "
                         f"encoding with another one would give wrong ids") from None


def pretokenize(text: str, pretokenizer: str = "gpt-2") -> list[str]:
    """Cut `text` into pre-tokens with the pre-tokenizer named `pretokenizer`:
    pretokenize("Hello  world's 123!!") -> ["Hello", " ", " world", "'s", " 123", "!!"]."""
    return get_pretokenizer(pretokenizer)(text)

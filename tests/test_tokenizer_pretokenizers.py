"""Tests for tinyinfer/tokenizer/pretokenizers.py: the splitters chosen by tokenizer.ggml.pre.

The fast forms are checked against their definitions: smollm's single regex against llama.cpp's
two passes (digits out, then GPT-2's regex on each stretch), and the BMP-only regexes with
stand-ins against the same regexes built from the full character classes. Agreement with
llama.cpp itself is in tests/test_tokenizer_llamacpp.py.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyinfer.tokenizer import PRETOKENIZERS, get_pretokenizer, pretokenize
from tinyinfer.tokenizer.pretokenizers import (_class_body, gpt2_split, llama_default_split, smollm_split,
                                               unicode_classes)

SETTINGS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])

# Characters that tell the classes apart, in every script and plane: letters, digits of other
# scripts, CJK, emoji (beyond U+FFFF), combining marks, the White_Space set, separators that
# Python's \s would wrongly call space, and letters Unicode 15 added (Kawi, CJK Extension H).
SPICE = ["a", "Z", "é", "ß", "ж", "中", "한", "٣", "５", "²", "Ⅻ", "𝟘", "𑽐", "😀", "👩‍👧", "\u0301", "\u20dd",
         " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x85", "\xa0", "\u2028", "\u3000", "\x1c", "\x1f", "\u200b",
         "'s", "'S", "'ll", "'", "!", "?!", "$", "+", "<=>", "^", "~", "|", "`", "_", "-", "…", "《",
         "0", "7", "12", " 345", "3.14", "\U00011f04", "\U00031350", "\U0002ebf0", "\ue000", "\U0010fffd",
         "\U000e0001", "\ufffe"]
spicy_text = st.lists(st.one_of(st.sampled_from(SPICE), st.text(max_size=6)), max_size=25).map("".join)


@lru_cache(maxsize=None)
def full_class_regex() -> re.Pattern:
    """GPT-2's regex from the full classes (every plane), as the slow obvious definition."""
    c = unicode_classes()
    L, N, S = _class_body(c["L"]), _class_body(c["N"]), _class_body(c["s"])
    return re.compile(r"'s|'t|'re|'ve|'m|'ll|'d" rf"| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+")


@lru_cache(maxsize=None)
def numbers() -> frozenset[int]:
    return frozenset(cp for a, b in unicode_classes()["N"] for cp in range(a, b + 1))


def smollm_two_pass(text: str) -> list[str]:
    """llama.cpp's definition of "smollm": every \\p{N} character is a piece; the stretches
    between them are each split by GPT-2's regex as if each were the whole text."""
    pieces, stretch = [], ""
    for ch in text:
        if ord(ch) in numbers():
            pieces += full_class_regex().findall(stretch) + [ch]
            stretch = ""
        else:
            stretch += ch
    return pieces + full_class_regex().findall(stretch)


# ------------------------------------------------------------------------------ examples

def test_the_issue_example_and_friends():
    assert smollm_split("x = 12345") == ["x", " =", " ", "1", "2", "3", "4", "5"]
    assert gpt2_split("x = 12345") == ["x", " =", " 12345"]
    assert llama_default_split("x = 12345!") == ["x", " ", "=", " ", "123", "45", "!"]
    assert smollm_split("a  1b") == ["a", "  ", "1", "b"]          # whitespace before a digit stays whole
    assert smollm_split("a  b") == ["a", " ", " b"]
    assert smollm_split("v2.0's ٣٤") == ["v", "2", ".", "0", "'s", " ", "٣", "٤"]


def test_registry_names_and_unknown_name():
    assert set(PRETOKENIZERS) == {"gpt-2", "smollm", "default"}
    assert get_pretokenizer("smollm") is smollm_split
    with pytest.raises(ValueError, match=r"unknown pre-tokenizer 'llama-bpe'.*'gpt-2', 'smollm', 'default'"):
        get_pretokenizer("llama-bpe")
    with pytest.raises(ValueError, match="unknown pre-tokenizer None"):
        pretokenize("x", None)
    assert pretokenize("Hello  world's 123!!") == ["Hello", " ", " world", "'s", " 123", "!!"]


def test_unicode_15_letters_and_numbers_are_classed():
    c = unicode_classes()

    def inside(cls, cp):
        return any(a <= cp <= b for a, b in c[cls])

    for cp in (0x11F04, 0x31350, 0x2EBF0, 0x1E4D0, 0x1B132):     # letters added in 15.0 / 15.1
        assert inside("L", cp) and not inside("N", cp)
    for cp in (0x11F50, 0x1D2C0, 0x1E4F0):                       # digits added in 15.0
        assert inside("N", cp)
    for cp in (0x41, 0x4E00, 0x1D400, 0x20000):                  # and the old ones are still there
        assert inside("L", cp)
    assert not inside("L", 0x1F600) and not inside("N", 0x1F600)  # emoji: neither
    assert c["s"][0] == (0x09, 0x0D) and not inside("s", 0x1C)  # \t..\r are space, U+001C is not


def test_categories_come_from_unicodedata():
    """Outside the 15.x additions, the classes are exactly Python's general categories."""
    c = unicode_classes()
    for cls, prefix in (("L", "L"), ("N", "N"), ("P", "P")):
        members = set()
        for a, b in c[cls]:
            members.update(range(a, b + 1))
        for cp in range(0, 0x110000, 97):
            cat = unicodedata.category(chr(cp))
            if cat != "Cn":
                assert (cp in members) == cat.startswith(prefix), (cls, hex(cp), cat)


# --------------------------------------------------------------- fast forms vs definitions

@SETTINGS
@given(text=spicy_text)
def test_gpt2_stand_ins_match_full_classes(text):
    assert gpt2_split(text) == full_class_regex().findall(text)


@SETTINGS
@given(text=spicy_text)
def test_smollm_one_regex_matches_two_passes(text):
    assert smollm_split(text) == smollm_two_pass(text)


@SETTINGS
@given(text=spicy_text)
@pytest.mark.parametrize("name", sorted(PRETOKENIZERS))
def test_pieces_cover_the_text(name, text):
    pieces = pretokenize(text, name)
    assert "".join(pieces) == text and all(pieces)


def test_every_plane_against_full_classes():
    """One character from every 211th code point, each in contexts that tell the classes apart."""
    cps = [cp for cp in range(0, 0x110000, 211) if not 0xD800 <= cp < 0xE000]
    text = "".join(f"a{c}1{c}!{c} {c}{c}\n{c} 7x" for c in map(chr, cps))
    assert gpt2_split(text) == full_class_regex().findall(text)
    assert smollm_split(text[:20000]) == smollm_two_pass(text[:20000])

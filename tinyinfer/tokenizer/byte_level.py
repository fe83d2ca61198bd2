"""Step 1 of byte-level BPE: every byte is a token, and how GPT-2 writes bytes as text.

Lesson: lessons/02-tokenizer.py

A token is a string of *bytes*. Starting from the 256 byte values means any text at all, in any
script, emoji included, can be encoded: there is no "unknown token". But vocabulary files
(tokenizer.json, GGUF's tokenizer.ggml.tokens) store tokens as text, where a space or a newline
byte would be invisible or ambiguous. GPT-2's answer, used by every byte-level BPE since, is a
fixed table from byte values to printable characters: " the" is written "Ġthe".
"""
from __future__ import annotations

from functools import lru_cache

__all__ = ["bytes_to_unicode", "unicode_to_bytes", "bytes_to_token_string", "token_string_to_bytes"]


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table mapping each of the 256 byte values to a printable character.

    Why: a token is a byte string, but tokenizer.json stores tokens as JSON text, and
    bytes like 0x20 (space) or 0x0A (newline) would be invisible or ambiguous there.
    So the 188 bytes that are already printable Latin-1 characters stand for
    themselves ("a" is "a") and the other 68 (controls, space, ...) are shifted up to
    U+0100 and beyond: space becomes "Ġ", newline "Ċ". That is why GPT-2 vocabularies
    are full of "Ġthe".

    The dict's *iteration order* matters too: it is the id order of the 256 byte
    tokens (printable bytes first, then the shifted ones), which is also the order
    you get by sorting the characters, as Hugging Face's trainer does.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@lru_cache(maxsize=None)
def unicode_to_bytes() -> dict[str, int]:
    """The table of bytes_to_unicode read backwards: "Ġ" -> 32."""
    return {ch: b for b, ch in bytes_to_unicode().items()}


def bytes_to_token_string(data: bytes) -> str:
    """b" the" -> "Ġthe": how a token's bytes are written in a vocabulary file."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def token_string_to_bytes(token: str) -> bytes:
    """"Ġthe" -> b" the", the inverse of bytes_to_token_string.

    A token containing a character outside the 256-entry table (an added token such as
    "<|endoftext|>" is fine, its characters are all printable ASCII) falls back to its
    plain UTF-8 bytes. Hugging Face's ByteLevel decoder does the same, so we match it.
    """
    table = unicode_to_bytes()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError:
        return token.encode("utf-8")

"""Byte-level BPE tokenizer (GPT-2 style), written from scratch.

Lesson: lessons/02-tokenizer.py

A language model never sees text; it sees integers. This module turns text into
integers and back, the way GPT-2 does, in four steps:

    1. bytes       Text becomes UTF-8 bytes. Every byte is a token, so *any* string,
                   in any script, emoji included, can be encoded: there is no
                   "unknown token". ids 0..255 are the 256 bytes.
    2. pre-tokens  A regular expression cuts the text into words, numbers, runs of
                   punctuation and runs of whitespace ("Hello world!" ->
                   "Hello", " world", "!"). Merges never cross these borders, so
                   " the" can become one token but "e t" never will.
    3. merges      Training counts adjacent token pairs over all pre-tokens and
                   repeatedly glues the most frequent pair into a new token
                   (" " + "t" -> " t", then " t" + "he" -> " the", ...). The
                   order in which merges were learned is their *rank*: encoding
                   replays them, lowest rank first.
    4. specials    Tokens such as "<|endoftext|>" are not text at all: they are
                   cut out of the input before anything else and get fixed ids
                   at the end of the vocabulary.

The result is byte-for-byte compatible with Hugging Face ``tokenizers``: ``save``
writes a ``tokenizer.json`` that library loads, ``from_file`` reads theirs (the
real GPT-2 one included), and ``encode`` returns the same ids theirs does.

Shape of the vocabulary built by ``train``:

    ids 0..255              one token per byte, in GPT-2's bytes_to_unicode() order
    ids 256..V-S-1          merged tokens, in the order they were learned
    ids V-S..V-1            the S special tokens
"""
from __future__ import annotations

import heapq
import json
import operator
import os
import re
import unicodedata
import warnings
from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

from tqdm import tqdm

__all__ = ["Tokenizer", "GPT2_SPLIT_PATTERN", "bytes_to_unicode"]

# GPT-2's pre-tokenizer, exactly as OpenAI and Hugging Face write it. \p{L} means
# "any letter", \p{N} "any number", in any script. Python's `re` does not know \p{..};
# see _split_regex() for how we build it without the third-party `regex` package.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>",)

# The pre-token cache is a plain dict; past this many entries we simply empty it, so
# encoding an endless stream of new words cannot eat all memory.
_CACHE_LIMIT = 1 << 17


# --------------------------------------------------------------------------------------
# Step 1: bytes, and how GPT-2 prints them
# --------------------------------------------------------------------------------------

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
def _unicode_to_bytes() -> dict[str, int]:
    return {ch: b for b, ch in bytes_to_unicode().items()}


def _bytes_to_token_string(data: bytes) -> str:
    """b" the" -> "Ġthe": how a token's bytes are written in tokenizer.json."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def _token_string_to_bytes(token: str) -> bytes:
    """"Ġthe" -> b" the", the inverse of _bytes_to_token_string.

    A token containing a character outside the 256-entry table (an added token such as
    "<|endoftext|>" is fine, its characters are all printable ASCII) falls back to its
    plain UTF-8 bytes. Hugging Face's ByteLevel decoder does the same, so we match it.
    """
    table = _unicode_to_bytes()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError:
        return token.encode("utf-8")


# --------------------------------------------------------------------------------------
# Step 2: pre-tokenization with Python's `re`
# --------------------------------------------------------------------------------------

# Unicode's White_Space property, which is what \s means in the regex engine Hugging
# Face uses (Oniguruma). We cannot use Python's \s: it also matches U+001C..U+001F
# (file/group/record/unit separators), which GPT-2 treats as punctuation. This list has
# been stable since Unicode 6.3 (when U+180E left it).
_WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                (0x3000, 0x3000)]


def _char_class_ranges(category_prefix: str) -> list[tuple[int, int]]:
    """All code points whose Unicode general category starts with `category_prefix`,
    as sorted (first, last) ranges. "L" = letters (Lu Ll Lt Lm Lo), "N" = numbers
    (Nd Nl No), which is exactly what \\p{L} and \\p{N} mean."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)).startswith(category_prefix):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)   # extend the current run
            else:
                ranges.append((cp, cp))
    return ranges


def _class_body(ranges: list[tuple[int, int]]) -> str:
    """Ranges -> the inside of a [...] character class, written with \\U escapes so the
    pattern stays plain ASCII and no character needs special-casing."""
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@lru_cache(maxsize=None)
def _split_regex() -> re.Pattern:
    """GPT2_SPLIT_PATTERN compiled for Python's built-in `re`.

    `re` has no \\p{L} / \\p{N}, and we do not want the third-party `regex` package as
    a dependency. So we build those classes ourselves: walk all 1.1 million code
    points once, ask `unicodedata.category` about each, and collapse the hits into a
    few hundred ranges like [A-Za-z\\u00aa...]. That walk takes about a second, so it is
    done lazily (only when a tokenizer first needs it) and cached by lru_cache.

    One caveat: the categories come from the Unicode version built into Python
    (unicodedata.unidata_version, 14.0 in Python 3.11). Every code point assigned in
    that version is classified exactly as Hugging Face's regex engine does (checked
    exhaustively; tests/test_tokenizer.py re-checks a sample). Code points Python
    still calls "unassigned" but a newer Unicode made letters or numbers (e.g.
    U+1C89, added in 16.0) count as punctuation here and can split differently.
    """
    letters = _class_body(_char_class_ranges("L"))
    numbers = _class_body(_char_class_ranges("N"))
    space = _class_body(_WHITE_SPACE)
    pattern = (
        r"'s|'t|'re|'ve|'m|'ll|'d"
        rf"| ?[{letters}]+"                      # ' ?\p{L}+'   words
        rf"| ?[{numbers}]+"                      # ' ?\p{N}+'   numbers
        rf"| ?[^{space}{letters}{numbers}]+"     # ' ?[^\s\p{L}\p{N}]+'   punctuation
        rf"|[{space}]+(?![^{space}])"            # '\s+(?!\S)'  whitespace not before a word
        rf"|[{space}]+"                          # '\s+'        any remaining whitespace
    )
    return re.compile(pattern)


def pretokenize(text: str) -> list[str]:
    """Cut text into GPT-2 pre-tokens: "Hello  world's" -> ["Hello", " ", " world", "'s"].

    Note how a run of spaces gives its *last* space to the next word: that is what
    `\\s+(?!\\S)` is for, so " world" looks the same wherever it appears.
    """
    return _split_regex().findall(text)


def _special_splitter(specials: Iterable[str]) -> re.Pattern | None:
    """A regex that finds any special token, preferring the longest at each position
    (Hugging Face's "leftmost-longest" rule), with a capture group so re.split keeps
    the specials it cuts on."""
    specials = sorted(specials, key=len, reverse=True)   # longest first wins ties
    if not specials:
        return None
    return re.compile("(" + "|".join(map(re.escape, specials)) + ")")


# --------------------------------------------------------------------------------------
# Step 3a: learning merges (training)
# --------------------------------------------------------------------------------------

def _count_pretokens(texts: Iterable[str], splitter: re.Pattern | None) -> Counter:
    """How often each distinct pre-token occurs in the corpus. Training only ever looks
    at distinct pre-tokens (a few hundred thousand even for megabytes of code), which
    is the first big speed-up over working on the raw text."""
    counts: Counter = Counter()
    for i, doc in enumerate(texts):
        if not isinstance(doc, str):
            raise TypeError(f"texts must contain str documents; item {i} is {type(doc).__name__}")
        segments = splitter.split(doc)[::2] if splitter else [doc]   # odd items are specials
        for segment in segments:
            counts.update(pretokenize(segment))
    return counts


def _merge_pair(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every (a, b) in `word` by new_id, scanning left to right, so "aaa" with
    pair (a, a) becomes [aa, a] (occurrences never overlap)."""
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _learn_merges(words: list[list[int]], freqs: list[int], token_strs: list[str],
                  n_tokens_wanted: int, progress: bool) -> list[tuple[int, int]]:
    """Greedy BPE: merge the most frequent adjacent pair until the vocabulary
    (`token_strs`, extended in place) has `n_tokens_wanted` entries.

    Speed comes from never recounting from scratch:
      * pair_counts[p]  how often pair p occurs, weighted by pre-token frequency;
      * where[p]        which words contain p (may hold stale entries, checked on use);
      * heap            (-count, a, b) entries, possibly out of date: when we pop one
                        whose count no longer matches pair_counts we push the fresh
                        count and try again ("lazy deletion").
    After a merge only the words that contained the pair are rewritten, and only
    their pairs' counts change.

    Ties: the heap orders equal counts by the pair's ids, so the pair (a, b) with the
    smallest a (then smallest b) wins, i.e. the pair of *older* tokens. This is the
    rule Hugging Face's trainer uses too, and it makes training fully deterministic
    (it never depends on dict or set iteration order).
    """
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for wi, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(wi)
    heap = [(-count, a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    str_to_id = {s: i for i, s in enumerate(token_strs)}
    merges: list[tuple[int, int]] = []
    bar = tqdm(total=n_tokens_wanted - len(token_strs), desc="BPE merges", unit="tok", disable=not progress)
    while len(token_strs) < n_tokens_wanted and heap:
        neg_count, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg_count:                  # stale entry: re-queue with the true count
            if count > 0:
                heapq.heappush(heap, (-count, a, b))
            continue

        # A merged string can already exist ("ab"+"c" and "a"+"bc" are both "abc"); like
        # Hugging Face we then reuse its id, so the vocab never holds a string twice.
        merged = token_strs[a] + token_strs[b]
        new_id = str_to_id.get(merged)
        if new_id is None:
            new_id = len(token_strs)
            token_strs.append(merged)
            str_to_id[merged] = new_id
            bar.update(1)
        merges.append((a, b))

        touched: set[tuple[int, int]] = set()
        for wi in sorted(where.pop((a, b))):
            word, freq = words[wi], freqs[wi]
            new_word = _merge_pair(word, a, b, new_id)
            if len(new_word) == len(word):       # stale: this word no longer has the pair
                continue
            for pair in zip(word, word[1:]):     # forget the old word's pairs...
                pair_counts[pair] -= freq
                touched.add(pair)
            for pair in zip(new_word, new_word[1:]):   # ...and count the new word's
                pair_counts[pair] = pair_counts.get(pair, 0) + freq
                where.setdefault(pair, set()).add(wi)
                touched.add(pair)
            words[wi] = new_word
        pair_counts.pop((a, b), None)
        for pair in touched:
            count = pair_counts.get(pair, 0)
            if count > 0:
                heapq.heappush(heap, (-count, *pair))
    bar.close()
    return merges


# --------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------

class Tokenizer:
    """A byte-level BPE tokenizer: `encode` text to ids, `decode` ids to text.

    Build one with `Tokenizer.train(texts, vocab_size)` or `Tokenizer.from_file(path)`.
    The constructor takes the raw tables (token strings in GPT-2's printable byte form,
    e.g. "Ġthe"), as stored in tokenizer.json:

        vocab           {token_string: id}, must contain all 256 byte tokens
        merges          [(left, right), ...]; index in the list = rank (priority)
        special_tokens  {content: id}, cut out of the text before BPE runs
        ignore_merges   Hugging Face option: a pre-token that is itself in the vocab is
                        emitted whole, without replaying merges
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                 special_tokens: dict[str, int] | None = None, ignore_merges: bool = False):
        special_tokens = dict(special_tokens or {})
        self._vocab = dict(vocab)
        self._merge_strings = [tuple(m) for m in merges]
        self._special_tokens = special_tokens
        self._ignore_merges = bool(ignore_merges)

        # id -> token string. Specials may or may not also be in the model vocab
        # (GPT-2's file lists <|endoftext|> in both); either way they get one id.
        id_to_str: dict[int, str] = {}
        for table in (self._vocab, special_tokens):
            for token, i in table.items():
                if not isinstance(i, int) or i < 0:
                    raise ValueError(f"token {token!r} has invalid id {i!r}; ids must be ints >= 0")
                if id_to_str.get(i, token) != token:
                    raise ValueError(f"id {i} is used by two tokens: {id_to_str[i]!r} and {token!r}")
                id_to_str[i] = token
        n = len(id_to_str)
        if n and max(id_to_str) != n - 1:
            missing = min(set(range(n)) - id_to_str.keys())
            raise ValueError(f"token ids must be contiguous 0..{n - 1}, but id {missing} is missing")
        self._id_to_str = [id_to_str[i] for i in range(n)]
        self._id_to_bytes = [_token_string_to_bytes(s) for s in self._id_to_str]
        for token, i in special_tokens.items():
            self._id_to_bytes[i] = token.encode("utf-8")   # a special is its literal text

        # Every byte must have a token, or some text could not be encoded at all (Hugging
        # Face would silently drop those bytes; we refuse instead).
        byte_chars = bytes_to_unicode()
        missing = [f"{b:#04x} ({byte_chars[b]!r})" for b in range(256) if byte_chars[b] not in self._vocab]
        if missing:
            raise ValueError(f"unsupported vocab: no token for byte(s) {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}; a byte-level BPE vocab needs all 256")
        self._byte_ids = [self._vocab[byte_chars[b]] for b in range(256)]

        # (left_id, right_id) -> (rank, merged_id). A pair listed twice keeps its later
        # rank, because later dict assignments overwrite earlier ones, as in Hugging Face.
        self._merges: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(self._merge_strings):
            for part in (left, right, left + right):
                if part not in self._vocab:
                    raise ValueError(f"merge #{rank} ({left!r}, {right!r}) uses {part!r}, which is not in the vocab")
            self._merges[(self._vocab[left], self._vocab[right])] = (rank, self._vocab[left + right])

        self._special_re = _special_splitter(special_tokens)
        self._cache: dict[str, list[int]] = {}

    # ---- training --------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, progress: bool = True) -> "Tokenizer":
        """Learn a vocabulary of `vocab_size` tokens (256 bytes + merges + specials).

        `texts` is an iterable of documents (str). Special tokens found inside them are
        cut out first, so "<|endoftext|>" never gets merged into ordinary tokens.
        If the corpus runs out of pairs to merge, the vocab ends up smaller than asked
        and a warning says so.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of documents (str), not a single str: "
                            "iterating a str gives single characters. Wrap it: train([text], ...)")
        special_tokens = list(special_tokens)
        for s in special_tokens:
            if not isinstance(s, str) or not s:
                raise ValueError(f"special tokens must be non-empty str, got {s!r}")
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special tokens must be distinct, got {special_tokens}")
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size must be an int >= {256 + len(special_tokens)} "
                             f"(256 byte tokens + {len(special_tokens)} special), got {vocab_size!r}")

        counts = _count_pretokens(texts, _special_splitter(special_tokens))
        # Sorting makes the word list, and so everything after, independent of the
        # order in which Counter happened to see the pre-tokens.
        pretokens = sorted(counts)
        byte_rank = {b: i for i, b in enumerate(bytes_to_unicode())}   # byte -> its id
        words = [[byte_rank[b] for b in p.encode("utf-8")] for p in pretokens]
        freqs = [counts[p] for p in pretokens]

        token_strs = list(bytes_to_unicode().values())                 # ids 0..255
        n_wanted = vocab_size - len(special_tokens)
        merges = _learn_merges(words, freqs, token_strs, n_wanted, progress)
        if len(token_strs) < n_wanted:
            warnings.warn(f"the training texts only allow {len(token_strs) - 256} merges; "
                          f"vocab_size is {len(token_strs) + len(special_tokens)}, not {vocab_size}")

        vocab = {s: i for i, s in enumerate(token_strs)}
        specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
        return cls(vocab, [(token_strs[a], token_strs[b]) for a, b in merges], specials)

    # ---- encoding --------------------------------------------------------------------

    def _bpe(self, ids: list[int]) -> list[int]:
        """Apply merges to one pre-token, lowest rank first.

        This follows Hugging Face's algorithm exactly (so results match even for odd
        merge lists): keep every mergeable adjacent pair in a heap keyed by
        (rank, position); pop the best, merge it if the pair is still there, then push
        the two new pairs it created with its neighbours. Symbols live in a linked list
        (`nxt`/`prv` arrays) so a merge costs O(log n), not O(n): long pre-tokens such
        as a 10,000-space run stay fast.
        """
        n = len(ids)
        if n < 2:
            return ids
        merges = self._merges
        sym = list(ids)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            m = merges.get((sym[i], sym[i + 1]))
            if m is not None:
                heap.append((m[0], i, m[1]))
        heapq.heapify(heap)
        while heap:
            rank, i, new_id = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j == -1 or merges.get((sym[i], sym[j])) != (rank, new_id):
                continue                          # an earlier merge already changed this spot
            sym[i] = new_id                       # the left symbol absorbs the right one
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k != -1:
                prv[k] = i
                m = merges.get((new_id, sym[k]))
                if m is not None:
                    heapq.heappush(heap, (m[0], i, m[1]))
            p = prv[i]
            if p != -1:
                m = merges.get((sym[p], new_id))
                if m is not None:
                    heapq.heappush(heap, (m[0], p, m[1]))
        return [s for s, a in zip(sym, alive) if a]

    def _encode_pretoken(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            data = piece.encode("utf-8")
            whole = self._vocab.get(_bytes_to_token_string(data)) if self._ignore_merges else None
            ids = [whole] if whole is not None else self._bpe([self._byte_ids[b] for b in data])
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Text -> token ids. Special tokens written literally in the text ("<|endoftext|>")
        become their single id; everything else goes through pre-tokenize + BPE."""
        if not isinstance(text, str):
            raise TypeError(f"encode(text) needs text to be a str, got {type(text).__name__}"
                            + ("; decode bytes first, e.g. data.decode('utf-8')" if isinstance(text, (bytes, bytearray)) else ""))
        out: list[int] = []
        segments = self._special_re.split(text) if self._special_re else [text]
        for k, segment in enumerate(segments):
            if k % 2:                             # odd items are the specials re.split kept
                out.append(self._special_tokens[segment])
                continue
            for piece in pretokenize(segment):
                out.extend(self._encode_pretoken(piece))
        return out

    def encode_batch(self, texts: Iterable[str], progress: bool = False) -> list[list[int]]:
        """encode() each text; shares the pre-token cache, so it is fast on similar texts."""
        if isinstance(texts, str):
            raise TypeError("encode_batch(texts) needs an iterable of str, not a single str; use encode(text)")
        return [self.encode(t) for t in tqdm(texts, desc="encoding", unit="text", disable=not progress)]

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

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the exact bytes they stand for. Always a perfect round trip:
        decode_bytes(encode(s)) == s.encode("utf-8")."""
        table = self._id_to_bytes
        return b"".join(table[self._check_id(i)] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. A token can end in the middle of a multi-byte character (a model
        may emit half an emoji); such broken bytes become U+FFFD "�", as in Hugging Face.
        Unlike Hugging Face's default, special tokens are kept, so decode(encode(s)) == s."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- lookups ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (an embedding table needs this many rows)."""
        return len(self._id_to_str)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def eos_id(self) -> int | None:
        """Id of "<|endoftext|>", GPT-2's end-of-text / document separator, if present."""
        return self._special_tokens.get("<|endoftext|>")

    @property
    def merges(self) -> list[tuple[str, str]]:
        """Learned merges, highest priority first, as token strings ("Ġ", "t")."""
        return list(self._merge_strings)

    def token_to_id(self, token: str) -> int | None:
        """"Ġthe" -> its id, or None if there is no such token (as in Hugging Face)."""
        return self._special_tokens.get(token, self._vocab.get(token))

    def id_to_token(self, i: int) -> str:
        """Id -> token string in GPT-2's printable byte form (e.g. "Ġthe")."""
        return self._id_to_str[self._check_id(i)]

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merge_strings)}, "
                f"special_tokens={self._special_tokens})")

    # ---- tokenizer.json --------------------------------------------------------------

    def to_dict(self) -> dict:
        """The tokenizer as a Hugging Face tokenizer.json structure (GPT-2 flavour)."""
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        # Specials are listed in the model vocab as well as in added_tokens, as in GPT-2's
        # own file and in what Hugging Face's trainer writes.
        vocab = {token: i for i, token in enumerate(self._id_to_str)}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
                for s, i in sorted(self._special_tokens.items(), key=lambda kv: kv[1])
            ],
            "normalizer": None,
            "pre_tokenizer": dict(byte_level),
            "post_processor": dict(byte_level),
            "decoder": dict(byte_level),
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": self._ignore_merges,
                "vocab": vocab,
                "merges": [f"{a} {b}" for a, b in self._merge_strings],
            },
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write a tokenizer.json that Hugging Face `tokenizers` (and from_file) can load."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=2)
            f.write("\n")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a GPT-2-style byte-level BPE tokenizer.json (e.g. GPT-2's own).

        Only plain JSON is parsed; nothing is executed or unpickled. Anything that
        would change how text is encoded and that we do not implement (a normalizer,
        another pre-tokenizer, a non-BPE model, dropout, ...) raises ValueError naming
        it, rather than silently encoding differently from Hugging Face.
        """
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: not a UTF-8 JSON tokenizer file ({e})") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "tokenizer.json") -> "Tokenizer":
        def unsupported(what: str) -> ValueError:
            return ValueError(f"{source}: unsupported {what}; tinyinfer.Tokenizer reads only GPT-2-style "
                              "byte-level BPE (ByteLevel pre-tokenizer and decoder, BPE model, no normalizer)")

        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise unsupported("file layout: no 'model' object")
        model = data["model"]
        if model.get("type", "BPE" if "merges" in model else None) != "BPE":
            raise unsupported(f"model type {model.get('type')!r} (only 'BPE')")
        if data.get("normalizer") is not None:
            raise unsupported(f"normalizer {data['normalizer'].get('type')!r} (must be null)")
        pre = data.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel":
            raise unsupported(f"pre_tokenizer {pre.get('type')!r} (only 'ByteLevel')")
        if pre.get("add_prefix_space", False) or not pre.get("use_regex", True):
            raise unsupported("ByteLevel pre_tokenizer option (need add_prefix_space=false, use_regex=true)")
        decoder = data.get("decoder")
        if decoder is not None and decoder.get("type") != "ByteLevel":
            raise unsupported(f"decoder {decoder.get('type')!r} (only 'ByteLevel')")
        post = data.get("post_processor")
        if post is not None and post.get("type") != "ByteLevel":
            raise unsupported(f"post_processor {post.get('type')!r} (only 'ByteLevel' or null; others add tokens)")
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
                parts = list(m)
            if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
                raise ValueError(f"{source}: malformed merge {m!r}; expected 'a b' or ['a', 'b']")
            merges.append((parts[0], parts[1]))

        specials = {}
        for tok in data.get("added_tokens", []):
            if tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
                raise unsupported(f"added token option on {tok.get('content')!r} (lstrip/rstrip/single_word)")
            if tok.get("content"):
                specials[tok["content"]] = tok["id"]
        return cls(vocab, merges, specials, ignore_merges=bool(model.get("ignore_merges", False)))

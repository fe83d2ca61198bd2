"""Step 3a of byte-level BPE: learning merges from a corpus (training).

Lesson: lessons/02-tokenizer.py

Training counts adjacent token pairs over all pre-tokens and repeatedly glues the most frequent
pair into a new token (" " + "t" -> " t", then " t" + "he" -> " the", ...). The order in which
merges were learned is their *rank*: encoding replays them, lowest rank first (merges.py).

The vocabulary train_vocab builds:

    ids 0..255              one token per byte, in GPT-2's bytes_to_unicode() order
    ids 256..V-S-1          merged tokens, in the order they were learned
    ids V-S..V-1            the S special tokens
"""
from __future__ import annotations

import heapq
import re
import warnings
from collections import Counter
from typing import Iterable, Sequence

from tqdm import tqdm

from .byte_level import bytes_to_unicode
from .pretokenizers import gpt2_split

__all__ = ["train_vocab"]


def _special_splitter(specials: Iterable[str]) -> re.Pattern | None:
    """A regex that finds any special token, longest first, with a capture group so re.split
    keeps the specials it cuts on."""
    specials = sorted(specials, key=len, reverse=True)   # longest first wins ties
    if not specials:
        return None
    return re.compile("(" + "|".join(map(re.escape, specials)) + ")")


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
            counts.update(gpt2_split(segment))
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


def train_vocab(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str],
                progress: bool) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int]]:
    """Learn (vocab, merges, special_tokens) for Tokenizer.train; see its docstring."""
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
                      f"vocab_size is {len(token_strs) + len(special_tokens)}, not {vocab_size}", stacklevel=3)

    vocab = {s: i for i, s in enumerate(token_strs)}
    specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
    return vocab, [(token_strs[a], token_strs[b]) for a, b in merges], specials

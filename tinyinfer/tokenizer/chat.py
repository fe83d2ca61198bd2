"""Chat templates: a conversation as the exact text an instruction-tuned model was trained on.

Lesson: lessons/02-tokenizer.py

A chat model does not see "messages"; it sees one text in which special tokens frame each
turn. SmolLM2 (like Qwen and many others) uses ChatML:

    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    What is 2+2?<|im_end|>
    <|im_start|>assistant
                                      <- the model writes from here, and ends with <|im_end|>

The model file says how to build that text: `tokenizer.chat_template` is a Jinja template,
rendered by Hugging Face with `messages` and `add_generation_prompt`. A Jinja engine is a big
dependency for one loop, so tinyinfer renders the ChatML family itself, after checking that the
file's template *is* of that family:

    for each message:  "<|im_start|>" + role + "\\n" + content + "<|im_end|>\\n"
    optionally:        a default system turn first, when the conversation has none
                       (the template says which text; SmolLM2's is above)
    at the end:        "<|im_start|>assistant\\n" if add_generation_prompt

Recognising the family: the template's tags are reduced to a canonical form (whitespace outside
strings removed, strings decoded as Jinja decodes them and joined where they are added
together, quotes unified) and compared with the canonical form of the family's templates. A
template with anything else in it (other roles, conditions, text between tags) is refused with
an error that says so, instead of being rendered wrongly. tests/test_chat_template.py checks the
output against jinja2 rendering SmolLM2's template, byte for byte.
"""
from __future__ import annotations

import json
import re

__all__ = ["ROLES", "IM_START", "IM_END", "ChatTemplateError", "chatml_default_system", "render_chat",
           "chat_segments", "check_messages"]

ROLES = ("system", "user", "assistant")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"   # ChatML's framing tokens


class ChatTemplateError(ValueError):
    """A chat template tinyinfer's renderer does not understand, or none at all."""


# The family, as Jinja source. \x00 marks where a template puts its default system prompt.
_PER_MESSAGE = "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
_GENERATION = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
_WITH_DEFAULT_SYSTEM = ("{% for message in messages %}"
                        "{% if loop.first and messages[0]['role'] != 'system' %}"
                        "{{ '<|im_start|>system\\n\x00<|im_end|>\\n' }}{% endif %}"
                        + _PER_MESSAGE + "{% endfor %}" + _GENERATION)
_PLAIN = "{% for message in messages %}" + _PER_MESSAGE + "{% endfor %}" + _GENERATION

# A Jinja string literal: quote, then ordinary characters or backslash escapes, then the same quote.
_LITERAL = re.compile(r"""'([^'\\]*(?:\\.[^'\\]*)*)'|"([^"\\]*(?:\\.[^"\\]*)*)\"""", re.DOTALL)
_TAG_OPEN = re.compile(r"\{[{%#]")
_TAG_CLOSE = {"{": "}}", "%": "%}", "#": "#}"}


def _decode_literal(body: str) -> str:
    """The value of a Jinja string literal's inside, decoded as Jinja's lexer does it
    (newlines normalised, then Python's unicode-escape rules: \\n, \\t, \\\\, \\', \\u00e9, ...)."""
    body = re.sub(r"\r\n|\r", "\n", body)
    return body.encode("ascii", "backslashreplace").decode("unicode-escape")


def _canonical_tag(body: str) -> str:
    """One tag's inside -> canonical text: literals as JSON strings (adjacent `'a' + 'b'` joined),
    all whitespace between them removed."""
    parts: list[str | tuple[str]] = []          # code text, or (literal value,)
    pos = 0
    for m in _LITERAL.finditer(body):
        parts.append(re.sub(r"\s+", "", body[pos:m.start()]))
        value = m.group(1) if m.group(1) is not None else m.group(2)
        parts.append((_decode_literal(value),))
        pos = m.end()
    parts.append(re.sub(r"\s+", "", body[pos:]))
    folded: list[str | tuple[str]] = []
    for part in parts:
        if part == "":
            continue
        # 'a' + 'b' -> 'ab': a literal, then "+", then a literal
        if isinstance(part, tuple) and len(folded) >= 2 and folded[-1] == "+" and isinstance(folded[-2], tuple):
            folded.pop()
            folded[-1] = (folded[-1][0] + part[0],)
        else:
            folded.append(part)
    return "".join(json.dumps(p[0]) if isinstance(p, tuple) else p for p in folded)


def _canonical(template: str) -> str:
    """A whole template -> its tags' canonical forms joined by '|', e.g.
    '%formessageinmessages|{"<|im_start|>"+message["role"]+...|%endfor|...'.
    Text outside tags would be output as it is; the family has none, so any is refused."""
    out: list[str] = []
    pos = 0
    while pos < len(template):
        m = _TAG_OPEN.search(template, pos)
        text = template[pos:m.start() if m else len(template)]
        if text:
            raise ChatTemplateError(f"text outside tags ({text[:40]!r})")
        if m is None:
            break
        kind, close = m.group()[1], _TAG_CLOSE[m.group()[1]]
        end, scan = -1, m.end()
        while True:                              # find the closing delimiter, skipping string literals
            lit = _LITERAL.search(template, scan)
            end = template.find(close, scan)
            if end < 0:
                raise ChatTemplateError(f"unclosed tag at character {m.start()}")
            if lit is None or lit.start() > end:
                break
            scan = lit.end()
        body = template[m.end():end].strip("-+")   # whitespace-control markers change nothing here
        if kind != "#":                          # comments render nothing
            out.append(kind + _canonical_tag(body))
        pos = end + len(close)
    return "|".join(out)


def _family_pattern(shape: str) -> re.Pattern:
    """The canonical form of a family template as a regex; the \\x00 mark matches any JSON string body."""
    canonical = re.escape(_canonical(shape))
    return re.compile(canonical.replace(re.escape(json.dumps("\x00")[1:-1]), r'((?:[^"\\]|\\.)*)') + "$")


_FAMILY = (_family_pattern(_WITH_DEFAULT_SYSTEM), _family_pattern(_PLAIN))


def chatml_default_system(template: str) -> str | None:
    """For a ChatML-family template: the default system prompt it inserts when a conversation has
    no system message, or None if it inserts none. ChatTemplateError for any other template."""
    if not isinstance(template, str):
        raise ChatTemplateError(f"this tokenizer has no chat template (tokenizer.chat_template is "
                                f"{type(template).__name__}); build the prompt text yourself")
    try:
        canonical = _canonical(template)
    except ChatTemplateError as e:
        canonical, problem = None, str(e)
    if canonical is not None:
        m = _FAMILY[0].match(canonical)
        if m:
            return json.loads('"' + m.group(1) + '"')
        if _FAMILY[1].match(canonical):
            return None
        problem = "its statements differ from the family's"
    raise ChatTemplateError(
        f"tinyinfer's chat renderer understands only the ChatML family (each message as "
        f"'<|im_start|>' + role + '\\n' + content + '<|im_end|>\\n', an optional default system turn, "
        f"'<|im_start|>assistant\\n' for the generation prompt); this template is not one ({problem}). "
        f"It starts: {template[:160]!r}")


def check_messages(messages) -> list[tuple[str, str]]:
    """messages -> [(role, content), ...], or a ValueError/TypeError naming messages[i] and what is wrong.
    Keys other than role and content (e.g. "name") are ignored, as the template ignores them."""
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty; a chat needs at least one message")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"messages[{i}] has no {key!r}; each message needs 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(map(repr, ROLES))}, got {role!r}")
        if not isinstance(content, str):
            raise TypeError(f"messages[{i}].content must be a str, got {type(content).__name__}")
        checked.append((role, content))
    return checked


def chat_segments(template: str | None, messages, add_generation_prompt: bool = True) -> list[tuple[str, bool]]:
    """The prompt `template` renders for `messages`, as (text, is_special_token) segments: the
    framing tokens "<|im_start|>" and "<|im_end|>" (True), and the text between them (False).

    Why segments: a message may contain the text "<|im_end|>". Rendered to one string and encoded
    with special=True, it would become the real token, and the user would have closed their own
    turn. Tokenizer.encode_chat encodes the framing tokens as tokens and everything else as text.
    """
    if not isinstance(add_generation_prompt, bool):
        raise TypeError(f"add_generation_prompt must be True or False, got {add_generation_prompt!r}")
    default_system = chatml_default_system(template)
    turns = check_messages(messages)
    if default_system is not None and turns[0][0] != "system":
        turns.insert(0, ("system", default_system))
    segments: list[tuple[str, bool]] = []
    for role, content in turns:
        segments += [(IM_START, True), (f"{role}\n{content}", False), (IM_END, True), ("\n", False)]
    if add_generation_prompt:
        segments += [(IM_START, True), ("assistant\n", False)]
    # "\n" then the next turn's framing: join neighbouring text so it is cut as one stretch
    joined: list[tuple[str, bool]] = []
    for text, special in segments:
        if joined and not special and not joined[-1][1]:
            joined[-1] = (joined[-1][0] + text, False)
        else:
            joined.append((text, special))
    return joined


def render_chat(template: str | None, messages, add_generation_prompt: bool = True) -> str:
    """The prompt text `template` renders for `messages` (a ChatML-family template, see above)."""
    return "".join(text for text, _ in chat_segments(template, messages, add_generation_prompt))

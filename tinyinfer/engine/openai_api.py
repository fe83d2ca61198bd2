"""The OpenAI API's side of tinyinfer serve: reading requests into SamplingParams, writing responses.

Lesson: lessons/08-serving.py

The fields, their types and defaults, and the JSON that comes back follow OpenAI's
/v1/completions and /v1/chat/completions (non-streamed objects and streamed chunks), so the
official `openai` client works unchanged. Nothing here knows about HTTP or threads:
tinyinfer/engine/server.py calls these functions from its request handlers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .sampling_params import SamplingParams


class ApiError(Exception):
    """An HTTP error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", allow: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.allow = allow  # the Allow header of a 405

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Job:
    """One checked request, on its way to the engine thread."""
    request_id: str             # also the response's "id"
    prompt: str | list[int]
    params: SamplingParams      # its max_tokens is replaced by the engine thread (see max_tokens)
    max_tokens: int | None      # None: whatever room the context leaves after the prompt (chat's default)
    prompt_param: str           # the request field an error about the prompt names: "prompt" or "messages"
    chat: bool
    model: str
    created: int


# ---- reading requests ----------------------------------------------------------------------------


def get_param(body: dict, name: str, kinds, default, expected: str):
    """body[name] if present and of one of kinds; JSON null means the default, as in OpenAI's API."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ApiError(400, f"{name} must be {expected}, got {value!r}", param=name, code="invalid_value")
    return value


def bad(name: str, expected: str, value) -> ApiError:
    return ApiError(400, f"{name} must be {expected}, got {value!r}", param=name, code="invalid_value")


# Accepted only at the value that means "off": the server does not implement them.
UNSUPPORTED = {"logprobs": (False, 0), "top_logprobs": (0,), "echo": (False,), "best_of": (1,), "suffix": ("",),
               "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},), "tools": ([],)}


def parse_sampling(body: dict, default_max_tokens: int | None):
    """-> (SamplingParams, max_tokens or None), from OpenAI's fields plus vLLM's top_k and ignore_eos."""
    for name, off in UNSUPPORTED.items():
        if body.get(name) is not None and body[name] not in off:
            raise ApiError(400, f"{name} is not supported by this server, got {body[name]!r}", param=name,
                           code="unsupported_parameter")
    n = get_param(body, "n", int, 1, "1")
    if n != 1:
        raise ApiError(400, f"n must be 1 (this server returns one choice per request), got {n!r}", param="n",
                       code="unsupported_parameter")
    max_tokens = get_param(body, "max_tokens", int, None, "an int >= 1")
    if max_tokens is None:  # the chat API's newer name for it
        max_tokens = get_param(body, "max_completion_tokens", int, default_max_tokens, "an int >= 1")
    if max_tokens is not None and max_tokens < 1:
        raise bad("max_tokens", "an int >= 1", max_tokens)
    temperature = get_param(body, "temperature", (int, float), 1.0, "a number >= 0")
    if not math.isfinite(temperature) or temperature < 0:
        raise bad("temperature", "a number >= 0 (0 is greedy)", temperature)
    top_p = get_param(body, "top_p", (int, float), 1.0, "a number in (0, 1]")
    if not 0 < top_p <= 1:
        raise bad("top_p", "a number in (0, 1]", top_p)
    top_k = get_param(body, "top_k", int, -1, "an int >= 1, or -1 or 0 for no limit (as in vLLM)")
    if top_k < -1:
        raise bad("top_k", "an int >= 1, or -1 or 0 for no limit (as in vLLM)", top_k)
    seed = get_param(body, "seed", int, None, "an int >= 0")
    if seed is not None and seed < 0:
        raise bad("seed", "an int >= 0", seed)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise bad("stop", "a non-empty string or a list of them", stop)
    ignore_eos = get_param(body, "ignore_eos", bool, False, "true or false")
    params = SamplingParams(max_tokens=1, temperature=float(temperature), top_k=None if top_k < 1 else top_k,
                            top_p=None if top_p == 1 else float(top_p), seed=seed, stop=stop or None,
                            ignore_eos=ignore_eos)
    return params, max_tokens


def parse_stream(body: dict) -> tuple[bool, bool]:
    """-> (stream, include_usage): usage as a last chunk is what stream_options asks for."""
    stream = get_param(body, "stream", bool, False, "true or false")
    options = get_param(body, "stream_options", dict, {}, "an object")
    return stream, bool(options.get("include_usage"))


def parse_prompt(body: dict):
    """A completion's prompt: a string or a list of token ids (one prompt per request)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise bad("prompt", "a string or a non-empty list of token ids (one prompt per request)", prompt)


CHAT_ROLES = ("system", "user", "assistant")


def chat_prompt(messages) -> str:
    """Messages -> one prompt string, in tinyinfer's chat template:

        <|system|>\\nYou write Python.\\n<|user|>\\nA loop, please.\\n<|assistant|>\\n

    The shipped models are small code LMs never trained on conversations, so this template is only
    a convention: it makes /v1/chat/completions work end to end, not the model chat well. A model
    tuned for chat would bring its own template (Hugging Face's chat_template), to be used here.
    """
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "a non-empty list of {role, content} objects", messages)
    parts = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in CHAT_ROLES:
            raise bad(f"messages[{i}].role", f"one of {', '.join(CHAT_ROLES)}", role)
        content = message.get("content")
        if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad(f"messages[{i}].content", "a string or a list of text parts", content)
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content", "a string", content)
        parts.append(f"<|{role}|>\n{content}\n")
    return "".join(parts) + "<|assistant|>\n"


# ---- writing responses ---------------------------------------------------------------------------


def usage(output) -> dict:
    prompt, completion = len(output.prompt_token_ids), len(output.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def whole_response(job: Job, output) -> dict:
    choice = {"index": 0, "logprobs": None, "finish_reason": output.finish_reason}
    if job.chat:
        choice["message"] = {"role": "assistant", "content": output.text}
    else:
        choice["text"] = output.text
    return {"id": job.request_id, "object": "chat.completion" if job.chat else "text_completion",
            "created": job.created, "model": job.model, "choices": [choice], "usage": usage(output)}


def chunk(job: Job, choices: list, **extra) -> dict:
    return {"id": job.request_id, "object": "chat.completion.chunk" if job.chat else "text_completion",
            "created": job.created, "model": job.model, "choices": choices, **extra}


def text_chunk(job: Job, text: str, finish_reason: str | None, role: bool = False) -> dict:
    choice = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
    if job.chat:  # chat streams deltas of a message; the first one says whose message it is
        choice["delta"] = ({"role": "assistant"} if role else {}) | ({"content": text} if text or role else {})
    else:
        choice["text"] = text
    return chunk(job, [choice])

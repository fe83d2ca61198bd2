"""The OpenAI API's side of tinyinfer serve: reading requests into SamplingParams, writing responses.

Lesson: lessons/08-serving.py

The fields, their types and defaults, and the JSON that comes back follow OpenAI's
/v1/completions and /v1/chat/completions (non-streamed objects and streamed chunks), so the
official `openai` client works unchanged. Nothing here knows about HTTP or threads:
tinyinfer/engine/server.py calls these functions from its request handlers.

Every field is checked before anything costly is done with it, and a refusal names the field,
what was expected and (cut short) what came: a 400 is cheaper than any work a bad request could
cause. Limits that a client may hit with a legitimate request (the number and length of stop
strings) also name the `tinyinfer serve` option that raises them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..sampling import MIN_TEMPERATURE, describe
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
    """One checked, tokenized request, on its way to the engine thread."""
    request_id: str             # also the response's "id"
    prompt_ids: list[int]
    params: SamplingParams      # max_tokens already fitted to the context
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
        raise bad(name, expected, value)
    return value


def bad(name: str, expected: str, value) -> ApiError:
    return ApiError(400, f"{name} must be {expected}, got {describe(value)}", param=name, code="invalid_value")


# Accepted only at the value that means "off": the server does not implement them.
UNSUPPORTED = {"logprobs": (False, 0), "top_logprobs": (0,), "echo": (False,), "best_of": (1,), "suffix": ("",),
               "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},), "tools": ([],)}


def parse_sampling(body: dict, default_max_tokens: int | None, max_stop_strings: int = 16,
                   max_stop_bytes: int = 256):
    """-> (SamplingParams, max_tokens or None), from OpenAI's fields plus vLLM's top_k and ignore_eos."""
    for name, off in UNSUPPORTED.items():
        if body.get(name) is not None and body[name] not in off:
            raise ApiError(400, f"{name} is not supported by this server, got {describe(body[name])}", param=name,
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
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < float("inf")):
        raise bad("temperature", f"0 (greedy) or a finite number >= {MIN_TEMPERATURE} (smaller ones overflow "
                                 f"logits / temperature)", temperature)
    top_p = get_param(body, "top_p", (int, float), 1.0, "a number in (0, 1]")
    if not 0 < top_p <= 1:
        raise bad("top_p", "a number in (0, 1]", top_p)
    top_k = get_param(body, "top_k", int, -1, "an int >= 1, or -1 or 0 for no limit (as in vLLM)")
    if top_k < -1:
        raise bad("top_k", "an int >= 1, or -1 or 0 for no limit (as in vLLM)", top_k)
    seed = get_param(body, "seed", int, None, "an int in [0, 2**64)")
    if seed is not None and not 0 <= seed < 2**64:
        raise bad("seed", "an int in [0, 2**64)", seed)
    stop = parse_stop(body.get("stop"), max_stop_strings, max_stop_bytes)
    ignore_eos = get_param(body, "ignore_eos", bool, False, "true or false")
    params = SamplingParams(max_tokens=1, temperature=float(temperature), top_k=None if top_k < 1 else top_k,
                            top_p=None if top_p == 1 else float(top_p), seed=seed, stop=stop,
                            ignore_eos=ignore_eos)
    return params, max_tokens


def parse_stop(stop, max_stop_strings: int, max_stop_bytes: int) -> list[str] | None:
    """A string or a list of strings, each non-empty, within the server's count and length limits.
    The limits keep the engine's per-token stop check small (tinyinfer/engine/detokenizer.py)."""
    if stop is None:
        return None
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list):
        raise bad("stop", "a non-empty string or a list of them", stop)
    if len(stop) > max_stop_strings:
        raise ApiError(400, f"stop has {len(stop)} strings; this server allows at most {max_stop_strings} "
                            f"(tinyinfer serve --max-stop-strings)", param="stop", code="invalid_value")
    for i, s in enumerate(stop):
        if not isinstance(s, str) or not s:
            raise bad(f"stop[{i}]", "a non-empty string", s)
        try:
            size = len(s.encode("utf-8"))
        except UnicodeEncodeError:
            raise bad(f"stop[{i}]", "valid Unicode text (a lone surrogate came)", s) from None
        if size > max_stop_bytes:
            raise ApiError(400, f"stop[{i}] is {size} bytes of UTF-8; this server allows at most {max_stop_bytes} "
                                f"(tinyinfer serve --max-stop-bytes)", param=f"stop[{i}]", code="invalid_value")
    return stop or None


def parse_model(body: dict, served: str):
    """OpenAI answers a model it does not serve with 404 model_not_found; so do we. An absent
    model field is taken to mean the one model served."""
    model = get_param(body, "model", str, served, "a string (the served model's id)")
    if model != served:
        raise ApiError(404, f"the model {model[:100]!r} does not exist here; this server serves {served!r} "
                            f"(GET /v1/models)", param="model", code="model_not_found")


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


def parse_messages(messages) -> list[dict]:
    """Chat messages -> [{"role", "content"}] with string content, or a 400 naming messages[i]."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "a non-empty list of {role, content} objects", messages)
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad(f"messages[{i}]", "an object with role and content", message)
        role = message.get("role")
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
        checked.append({"role": role, "content": content})
    return checked


def chat_prompt(messages) -> str:
    """Messages -> one prompt string, in tinyinfer's own chat template, for models without one:

        <|system|>\nYou write Python.\n<|user|>\nA loop, please.\n<|assistant|>\n

    The shipped models are small code LMs never trained on conversations, so this template is only
    a convention: it makes /v1/chat/completions work end to end, not the model chat well. A model
    tuned for chat brings its own template (its tokenizer's chat_template), which the server uses
    instead (tinyinfer/engine/server.py: Handler.chat_ids).
    """
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in parse_messages(messages)) + "<|assistant|>\n"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def end_of_turn_ids(tokenizer) -> list[int]:
    """The ids that end an assistant's turn: the tokenizer's end-of-text id, any stop ids it lists,
    and the end-of-turn markers of the common templates when its vocabulary has them (ChatML's
    <|im_end|>, Llama 3's <|eot_id|>)."""
    ids = set()
    eos = getattr(tokenizer, "eos_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    for name in ("eos_ids", "stop_ids", "stop_token_ids"):
        ids.update(t for t in getattr(tokenizer, name, None) or () if isinstance(t, int))
    specials = getattr(tokenizer, "special_tokens", None) or {}
    ids.update(specials[t] for t in ("<|im_end|>", "<|eot_id|>") if t in specials)
    return sorted(ids)


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

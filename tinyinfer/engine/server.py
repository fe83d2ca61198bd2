"""An OpenAI-compatible HTTP server over LLMEngine, with the standard library only.

Lesson: lessons/08-serving.py

    tinyinfer serve --model models/tiny --host 127.0.0.1 --port 8000
    curl -N http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
         -d '{"prompt": "def add(a, b):", "max_tokens": 32, "temperature": 0, "stream": true}'

Routes: POST /v1/completions, POST /v1/chat/completions (both whole or streamed as server-sent
events), GET /v1/models, GET /health (HEAD and OPTIONS too). Any API key is accepted (the
Authorization header is ignored).

Threads, and who may touch what:

    HTTP handler threads (one per connection)        the engine thread (exactly one)
    read + check the request, tokenize it,
    build its SamplingParams  ----Job------------->  inbox: queue.Queue
                                                     add_request / step / abort
    per-request queue.Queue   <--ACCEPTED, StepOutput, ..., the finished one (or an ApiError)
    decode tokens to text, write JSON or SSE
    events; a failed write   ----------------------> ("abort", request_id)

The engine is not thread-safe (the scheduler, block manager and KV cache are plain Python state),
so only the engine thread calls it. With no work it sleeps in inbox.get(): no busy-waiting. With
work it drains the inbox without blocking, then runs one step(), so requests join the running
batch at the next step (continuous batching) whatever connection they came from.

One engine thread serves everyone, so it does only what must be done there: the model step and
the bookkeeping around it. Everything else that grows with one client's request (reading and
parsing its JSON, tokenizing its prompt, building its stop-string matcher, decoding its tokens
to text) runs in that client's handler thread. A client with a huge prompt then slows its own
request, not everybody's next token.

One request must never hurt another:
  * a request that fails inside a step (its forward or sampling raised) ends alone with a 500 or
    an in-band error event; the engine frees its blocks and serves on (tinyinfer/engine/llm.py);
  * sizes are checked before the work they would cost: the body's length before reading it, its
    JSON values before parsing it, the prompt's bytes before tokenizing it, its tokens before
    queueing it (ServerLimits);
  * connections: a listen backlog sized for bursts of clients, a cap on open connections (beyond
    it a polite 503), and a deadline for a request's headers and body, so clients that send
    slowly on purpose cannot hold threads for long.

Reading the OpenAI request fields and writing OpenAI's response objects live in
tinyinfer/engine/openai_api.py; this module is the HTTP and the threads around them.

Why http.server.ThreadingHTTPServer and not asyncio: every handler is ordinary blocking code that
reads top to bottom (read the body, submit, q.get(), write), and the bridge to the engine thread
is two queue.Queue objects. With asyncio the same bridge needs loop.call_soon_threadsafe and
asyncio.Queue on one side and a thread-safe queue on the other: more ideas for the same result.
The price is one OS thread per open connection, which is fine for a hundred clients on a
teaching server (vLLM uses asyncio + uvicorn because it serves thousands), and the hardening the
standard library leaves to us: the backlog, the connection cap, the read deadline and JSON for
the errors it would answer in HTML are each a few lines below. The model, not HTTP, is the
bottleneck here either way.

What this server does not do: n > 1, logprobs, echo, penalties, tools, batched prompts,
authentication, TLS. A client that disconnects is noticed when a write to it fails (streams:
within a token or two); a non-streamed request runs to the end before its write can fail.
"""
from __future__ import annotations

import io
import json
import queue
import re
import selectors
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .detokenizer import TextStream
from .llm import LLMEngine, StepOutput
from .openai_api import (ApiError, Job, chat_prompt, chunk, end_of_turn_ids, has_chat_template, parse_messages,
                         parse_model, parse_prompt, parse_sampling, parse_stream, text_chunk, usage,
                         whole_response)
from .sampling_params import SamplingParams

ACCEPTED = "accepted"  # first message on a request's queue when the engine took it


@dataclass
class ServerLimits:
    """What one request may ask for and what the server holds open. Each is a `tinyinfer serve`
    option of the same name (--max-body-bytes, ...) and each refusal names it."""
    max_body_bytes: int = 1 << 20      # a request body, checked against Content-Length before reading
    max_json_values: int | None = None  # JSON values in a body, bounded before parsing (see json_value_bound);
                                       # None: 65,536, or 2 * max_model_len + 1024 if more (a prompt of ids)
    max_prompt_bytes: int | None = None  # a prompt's UTF-8 bytes, checked before tokenizing; None: the
                                       # most that max_model_len tokens can be (the longest token's
                                       # bytes times max_model_len), so no prompt that could fit is refused
    max_stop_strings: int = 16         # stop strings per request (OpenAI allows 4)
    max_stop_bytes: int = 256          # UTF-8 bytes per stop string
    max_connections: int = 128         # open connections (one thread each); beyond it: 503
    backlog: int = 128                 # connections the kernel queues before accept() (the stdlib's is 5)
    request_timeout: float = 10.0      # seconds to receive a request's line, headers and body; also the
                                       # longest a write may stall and how long an idle keep-alive waits

    def __post_init__(self):
        for name in ("max_body_bytes", "max_stop_strings", "max_stop_bytes", "max_connections", "backlog"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("max_json_values", "max_prompt_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        if not isinstance(self.request_timeout, (int, float)) or not 0 < self.request_timeout < float("inf"):
            raise ValueError(f"request_timeout must be a number of seconds > 0, got {self.request_timeout!r}")


# ---- the engine thread ---------------------------------------------------------------------------


class EngineLoop:
    """Owns an LLMEngine and drives it from one thread; other threads talk to it through queues."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.inbox: queue.Queue = queue.Queue()  # ("add", job, outbox) | ("abort", id) | ("stop",)
        self.listeners: dict[str, queue.Queue] = {}  # live request id -> its outbox (engine thread only)
        self.aborted_ids = deque(maxlen=1000)  # the last requests aborted for clients that left (for tests)
        self.failed_ids = deque(maxlen=1000)   # the last requests that failed inside a step (for tests)
        self.thread = threading.Thread(target=self.run, name="tinyinfer-engine", daemon=True)

    # called from handler threads
    def submit(self, job: Job) -> queue.Queue:
        outbox: queue.Queue = queue.Queue()
        self.inbox.put(("add", job, outbox))
        return outbox

    def abort(self, request_id: str):
        self.inbox.put(("abort", request_id))

    def start(self):
        self.thread.start()

    def stop(self, timeout: float = 10.0):
        if self.thread.is_alive():
            self.inbox.put(("stop",))
            self.thread.join(timeout)

    # the engine thread
    def run(self):
        while True:
            try:
                if not self.run_once():
                    return
            except Exception:  # a bug outside any one request: fail the live ones, keep serving
                traceback.print_exc()
                self.fail_all(ApiError(500, "the engine failed while running a step", type="server_error"))

    def run_once(self) -> bool:
        """Take the commands waiting (sleep for one if idle), then step; False after "stop"."""
        commands = [] if self.engine.has_unfinished_requests() else [self.inbox.get()]
        while True:
            try:
                commands.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        for command in commands:
            if command[0] == "stop":
                self.fail_all(ApiError(503, "the server is shutting down", type="server_error"))
                return False
            if command[0] == "add":
                self.add(*command[1:])
            elif command[0] == "abort" and self.engine.abort(command[1]):
                self.listeners.pop(command[1], None)
                self.aborted_ids.append(command[1])
        if self.engine.has_unfinished_requests():
            self.step()
        return True

    def add(self, job: Job, outbox: queue.Queue):
        """Queue a tokenized, checked job; what is left to check here is cheap (token ids against
        the vocabulary, the request id)."""
        try:
            self.engine.add_request(job.prompt_ids, job.params, request_id=job.request_id)
        except (ValueError, TypeError) as err:  # the engine's own checks name what is wrong
            outbox.put(ApiError(400, str(err), param=job.prompt_param))
            return
        except Exception as err:  # a bug: this client gets a 500, the engine thread lives on
            traceback.print_exc()
            outbox.put(ApiError(500, f"the engine could not take the request: {type(err).__name__}",
                                type="server_error"))
            return
        self.listeners[job.request_id] = outbox
        outbox.put(ACCEPTED)

    def step(self):
        outputs = self.engine.step(detokenize=False)  # the handler threads decode their own text
        for out in outputs:
            outbox = self.listeners.get(out.request_id)
            if out.finished:
                self.listeners.pop(out.request_id, None)
            if out.finish_reason == "error":  # this request alone failed; tell its client why
                self.failed_ids.append(out.request_id)
                err = out.output.error
                traceback.print_exception(type(err), err, err.__traceback__)
                out = ApiError(500, f"the request failed while generating: {type(err).__name__}: {err}",
                               type="server_error", code="generation_failed")
            if outbox is not None:
                outbox.put(out)

    def fail_all(self, err: ApiError):
        for request_id, outbox in list(self.listeners.items()):
            try:
                self.engine.abort(request_id)
            except Exception:  # the engine's state is what failed; still answer the client
                traceback.print_exc()
            outbox.put(err)
        self.listeners.clear()


# ---- HTTP ----------------------------------------------------------------------------------------


class DeadlineReader(io.RawIOBase):
    """A socket's reading side with a deadline for the whole request, not for each read.

    A per-read timeout alone does not stop a client that sends one header byte every few seconds
    (each read succeeds in time). Here every read may wait only until the deadline, so a
    request's line, headers and body must all arrive within ServerLimits.request_timeout.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline: float | None = None  # time.monotonic() value; None: no deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the request did not arrive in time")
            self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


CONTENT_LENGTH = re.compile(r"[0-9]{1,15}")  # ASCII digits only: str.isdigit() also takes "²"


def json_value_bound(raw: bytes) -> int:
    """At least as many values as json.loads(raw) would build, counted in C without parsing: every
    value after the first follows a '[', '{', ',' or ':' (those inside strings only raise the bound).

    Why count: json.loads holds the GIL from start to end, so every stream waits while one body is
    parsed, and its time grows with the number of values, not the bytes. Measured on a 2-core AMD
    EPYC shared with other jobs (load average ~8): a 1 MiB body of 350,000 empty lists took 340 ms
    to parse, the same MiB as one string 3-11 ms. Bounding the values bounds that stall."""
    return 1 + raw.count(b"[") + raw.count(b"{") + raw.count(b",") + raw.count(b":")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses its connection
    server_version = "tinyinfer"
    headers_sent = False
    routes = {"/v1/completions": ("POST", "completions"), "/v1/chat/completions": ("POST", "chat"),
              "/v1/models": ("GET", "models"), "/health": ("GET", "health")}

    def setup(self):
        self.timeout = self.server.limits.request_timeout  # StreamRequestHandler applies it to the socket
        super().setup()
        self.rfile.close()  # read through the deadline instead (buffered: readline stays cheap)
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self):
        # The deadline covers waiting for the request too: an idle keep-alive connection is
        # closed after request_timeout, as most servers do (uvicorn: 5 s).
        self.headers_sent = False
        self.reader.deadline = time.monotonic() + self.server.limits.request_timeout
        super().handle_one_request()

    def request_read(self):
        """The whole request is in: no deadline from here on, and writes may stall request_timeout."""
        self.reader.deadline = None
        self.connection.settimeout(self.server.limits.request_timeout)

    def do_GET(self):
        self.dispatch("GET")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_OPTIONS(self):
        self.dispatch("OPTIONS")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def dispatch(self, method: str):
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path not in self.routes:
                raise ApiError(404, f"no route {path[:200]!r}; this server has {', '.join(self.routes)}",
                               code="not_found")
            allowed, name = self.routes[path]
            allow = "GET, HEAD, OPTIONS" if allowed == "GET" else "POST, OPTIONS"
            if method == "OPTIONS":
                self.send_response(204)
                self.send_header("Allow", allow)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if method != allowed and not (method == "HEAD" and allowed == "GET"):
                raise ApiError(405, f"{path} takes {allowed}, not {method}", code="method_not_allowed", allow=allow)
            if method != "POST":
                self.request_read()
            getattr(self, "route_" + name)()
        except ApiError as err:
            self.send_error_json(err)
        except OSError:  # the client left or stalled while we read or wrote: nothing to answer
            self.close_connection = True
        except Exception:
            traceback.print_exc()
            self.send_error_json(ApiError(500, "internal server error", type="server_error"))

    def send_error(self, code, message=None, explain=None):
        """The standard library's own refusals (a request line too long: 414, too many or too long
        headers: 431, an unknown method: 501, ...) as JSON like every other error, not HTML."""
        short = self.responses.get(code, ("error",))[0]
        if self.request_version == "HTTP/0.9":  # what the stdlib assumes before it could parse the version;
            self.request_version = "HTTP/1.1"  # an HTTP/0.9 answer would have no status line at all
        self.send_error_json(ApiError(code, message or short, code=re.sub(r"\W+", "_", short.lower()),
                                      type="invalid_request_error" if code < 500 else "server_error"))

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    # ---- plumbing ----------------------------------------------------------------------------

    def read_json(self) -> dict:
        """The body as a JSON object, or a 4xx. Every size is checked before what it would cost."""
        limit = self.server.limits.max_body_bytes
        if "Transfer-Encoding" in self.headers:
            raise ApiError(411, "chunked request bodies are not supported; send a Content-Length header",
                           code="length_required")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a POST needs a Content-Length header", code="length_required")
        if not CONTENT_LENGTH.fullmatch(length.strip()):
            raise ApiError(400, f"Content-Length must be a number of bytes, got {length[:40]!r}",
                           code="invalid_content_length")
        size = int(length)
        if size > limit:  # before reading: a huge body is refused, not buffered
            raise ApiError(413, f"the request body is {size} bytes; the limit is {limit} "
                                f"(tinyinfer serve --max-body-bytes)", code="body_too_large")
        media_type = self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(415, f"the body must be JSON (Content-Type: application/json), got "
                                f"{media_type[:60]!r}", code="unsupported_media_type")
        raw = self.rfile.read(size)
        if len(raw) < size:
            raise ApiError(400, f"the body ended after {len(raw)} of its {size} bytes", code="incomplete_body")
        self.request_read()
        values, max_values = json_value_bound(raw), self.server.max_json_values
        if values > max_values:
            raise ApiError(413, f"the request body may hold up to {values} JSON values (counting its '[', '{{', ',' "
                                f"and ':'); the limit is {max_values} (tinyinfer serve --max-json-values)",
                           code="too_many_values")
        try:
            body = json.loads(raw)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            raise ApiError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None
        except RecursionError:  # [[[[...]]]] deeper than Python's recursion limit
            raise ApiError(400, "the request body is not valid JSON: nested too deeply",
                           code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}",
                           code="invalid_json")
        return body

    def send_json(self, status: int, payload: dict, close: bool = False, allow: str | None = None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if allow:
            self.send_header("Allow", allow)
        if close:  # after an error the rest of the request may still be unread: end the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.headers_sent = True
        if getattr(self, "command", None) != "HEAD":  # a HEAD response has the GET's headers, never a body
            self.wfile.write(data)

    def send_error_json(self, err: ApiError):
        self.close_connection = True
        if self.headers_sent:  # too late for a status line; the stream writer reports in-band
            return
        try:
            self.send_json(err.status, err.body(), close=True, allow=err.allow)
        except OSError:
            pass

    def write_chunk(self, data: bytes):
        # HTTP/1.1 chunked transfer: "<length in hex>\r\n<data>\r\n"; an empty chunk ends the body.
        # wfile is unbuffered, so each event leaves at once (a failed send raises right here).
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def send_event(self, payload):
        """One server-sent event: "data: <json>\\n\\n" (or "data: [DONE]\\n\\n")."""
        self.write_chunk(b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
                         + b"\n\n")

    # ---- routes ------------------------------------------------------------------------------

    def route_health(self):
        """Alive or not, and what the engine holds: requests running and waiting, KV-cache blocks
        in use. Read from this thread without a lock: a snapshot, exact when the server is idle
        (a benchmark checks there that every block came back)."""
        loop = self.server.engine_loop
        alive = loop.thread.is_alive()
        engine = loop.engine
        blocks = engine.block_manager
        self.send_json(200 if alive else 503, {
            "status": "ok" if alive else "engine thread stopped",
            "requests": {"running": len(engine.scheduler.running), "waiting": len(engine.scheduler.waiting)},
            "kv_cache_blocks": {"total": blocks.num_blocks, "free": blocks.num_free_blocks,
                                "in_use": blocks.num_blocks - blocks.num_free_blocks}})

    def route_models(self):
        model = {"id": self.server.model_id, "object": "model", "created": self.server.created,
                 "owned_by": "tinyinfer", "max_model_len": self.server.engine_loop.engine.max_model_len}
        self.send_json(200, {"object": "list", "data": [model]})

    # Each route checks every cheap field first, then does the one costly thing (tokenizing).

    def route_completions(self):
        body = self.read_json()
        parse_model(body, self.server.model_id)
        params, max_tokens = self.parse_sampling(body, default_max_tokens=16)  # OpenAI's default
        stream = parse_stream(body)
        prompt = parse_prompt(body)
        ids = self.server.prompt_ids(prompt, "prompt") if isinstance(prompt, str) else self.check_ids(prompt)
        job = self.make_job("cmpl", ids, self.fit_to_context(ids, params, max_tokens, "prompt"), "prompt", chat=False)
        self.run_job(job, *stream)

    def route_chat(self):
        body = self.read_json()
        parse_model(body, self.server.model_id)
        params, max_tokens = self.parse_sampling(body, default_max_tokens=None)  # None: fill the context
        stream = parse_stream(body)
        ids, end_ids = self.chat_ids(parse_messages(body.get("messages")))
        if end_ids and not params.ignore_eos:  # stop at the end of the assistant's turn
            params = replace(params, stop_token_ids=sorted(set(params.stop_token_ids) | set(end_ids)))
        job = self.make_job("chatcmpl", ids, self.fit_to_context(ids, params, max_tokens, "messages"), "messages",
                            chat=True)
        self.run_job(job, *stream)

    # ---- a request's own work, in its own thread ------------------------------------------------

    def parse_sampling(self, body, default_max_tokens):
        limits = self.server.limits
        return parse_sampling(body, default_max_tokens, limits.max_stop_strings, limits.max_stop_bytes)

    def chat_ids(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """-> (prompt ids, ids that end the assistant's turn). A tokenizer with a chat template
        (a model tuned for chat) renders the conversation itself, its special tokens atomic;
        without one, tinyinfer's own template (openai_api.chat_prompt) is plain text."""
        tokenizer = self.server.engine_loop.engine.tokenizer
        if not has_chat_template(tokenizer):
            return self.server.prompt_ids(chat_prompt(messages), "messages"), []
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            self.server.check_prompt_bytes(text, "messages")  # before any tokenizing
            # encode_chat encodes the messages as plain text, so a message holding "<|im_end|>"
            # cannot end its own turn; a tokenizer without it encodes the rendered prompt
            encode_chat = getattr(tokenizer, "encode_chat", None)
            ids = encode_chat(messages) if encode_chat else tokenizer.encode(text, special=True)
        except (ValueError, TypeError, KeyError) as err:
            raise ApiError(400, f"messages could not be rendered with the model's chat template: {err}",
                           param="messages", code="invalid_value") from None
        if not ids:
            raise ApiError(400, "messages is empty: give at least one token", param="messages", code="invalid_value")
        return ids, end_of_turn_ids(tokenizer)

    def check_ids(self, ids: list[int]) -> list[int]:
        """A prompt of token ids: its length before anything else looks at it."""
        limit = self.server.engine_loop.engine.max_model_len
        if len(ids) >= limit:
            raise ApiError(400, f"prompt is {len(ids)} tokens, leaving no room to generate within the "
                                f"{limit} tokens this server serves (max_model_len)", param="prompt",
                           code="context_length_exceeded")
        return ids

    def fit_to_context(self, ids: list[int], params: SamplingParams, max_tokens: int | None, param: str):
        """-> params with max_tokens set, or a 400 if the context cannot hold prompt + max_tokens."""
        limit = self.server.engine_loop.engine.max_model_len
        max_tokens = limit - len(ids) if max_tokens is None else max_tokens
        if max_tokens < 1 or len(ids) + max_tokens > limit:
            why = ("leaving no room to generate within" if max_tokens < 1 and len(ids) >= limit
                   else f"and max_tokens is {max_tokens}, together {len(ids) + max_tokens}, more than")
            raise ApiError(400, f"{param} is {len(ids)} tokens, {why} the {limit} tokens this server serves "
                                f"(the model's context, or --max-model-len)", param=param,
                           code="context_length_exceeded")
        return replace(params, max_tokens=max_tokens)

    def make_job(self, prefix, ids, params, prompt_param, chat) -> Job:
        return Job(f"{prefix}-{uuid.uuid4().hex}", ids, params, prompt_param, chat, self.server.model_id,
                   int(time.time()))

    # ---- one request through the engine --------------------------------------------------------

    def run_job(self, job: Job, stream: bool, include_usage: bool):
        outbox = self.server.engine_loop.submit(job)
        first = outbox.get()  # ACCEPTED or an ApiError (bad token id, shutting down)
        if isinstance(first, ApiError):
            raise first
        finished = False
        try:
            if stream:
                finished = self.stream_events(job, outbox, include_usage)
            else:
                output = self.wait_for_output(outbox)
                finished = True
                self.send_json(200, whole_response(job, output))
        finally:
            if not finished:  # the client went away (or we failed): free its blocks now
                self.server.engine_loop.abort(job.request_id)

    def wait_for_output(self, outbox: queue.Queue):
        while True:
            item = outbox.get()
            if isinstance(item, ApiError):
                raise item
            if item.finished:
                return item.output

    def stream_events(self, job: Job, outbox: queue.Queue, include_usage: bool) -> bool:
        """Send events until the request finishes; -> whether it did (False: the client left)."""
        tokenizer = self.server.engine_loop.engine.tokenizer
        matcher = job.params.stop_matcher
        text = TextStream(hold_bytes=matcher.max_len - 1 if matcher else 0)  # decoded here, not on the engine thread
        finished = False
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.headers_sent = True
            if job.chat:
                self.send_event(text_chunk(job, "", None, role=True))
            while not finished:
                item: StepOutput | ApiError = outbox.get()
                if isinstance(item, ApiError):  # after the 200 the error can only travel in-band
                    self.send_event(item.body())
                    finished = True  # the engine thread already dropped the request
                    break
                finished = item.finished
                new_text = (text.finish(item.output.text) if finished
                            else text.add(tokenizer.decode_bytes(item.new_token_ids)))
                if new_text or finished:  # text held back (a possible stop string) sends nothing
                    self.send_event(text_chunk(job, new_text, item.finish_reason if finished else None))
                if finished and include_usage:
                    self.send_event(chunk(job, [], usage=usage(item.output)))
            self.send_event(b"[DONE]")
            self.write_chunk(b"")
        except OSError:  # BrokenPipeError, ConnectionResetError, a timeout: the client is gone
            self.close_connection = True
            self.log_message("client left during %s; aborting it", job.request_id)
        return finished


class Refuser:
    """Answers connections beyond the cap with a 503, from one thread for all of them.

    The answer is written at once (a fresh socket's send buffer takes a few hundred bytes), but
    the socket is closed only when the client has finished sending its request, or after `grace`
    seconds: closing a socket whose request is unread makes the kernel reset the connection, and
    the client would see the reset instead of the answer. A selector waits on every such socket
    at once, so a flood of refused clients costs one thread, not one each.
    """

    def __init__(self, grace: float = 1.0):
        self.grace = grace
        self.selector = selectors.DefaultSelector()
        self.incoming: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self.run, name="tinyinfer-refuser", daemon=True)
        self.thread.start()

    def refuse(self, sock: socket.socket, answer: bytes):
        try:
            sock.setblocking(False)
            sock.send(answer)
            sock.shutdown(socket.SHUT_WR)  # the answer is all we send
        except OSError:
            sock.close()
            return
        self.incoming.put(sock)

    def stop(self):
        self.incoming.put(None)

    def run(self):
        deadlines: dict[socket.socket, float] = {}
        while True:
            while deadlines == {} or not self.incoming.empty():  # idle: sleep until a refusal comes
                sock = self.incoming.get()
                if sock is None:  # stop(): let the pending ones go now
                    for pending in deadlines:
                        pending.close()
                    self.selector.close()
                    return
                deadlines[sock] = time.monotonic() + self.grace
                self.selector.register(sock, selectors.EVENT_READ)
            for key, _ in self.selector.select(timeout=0.05):
                try:
                    done = not key.fileobj.recv(65536)  # drain the request; b"": the client is done
                except BlockingIOError:
                    done = False
                except OSError:
                    done = True
                if done:
                    deadlines[key.fileobj] = 0.0
            now = time.monotonic()
            for sock in [s for s, t in deadlines.items() if t <= now]:
                del deadlines[sock]
                self.selector.unregister(sock)
                sock.close()


class OpenAIServer(ThreadingHTTPServer):
    """ThreadingHTTPServer + one EngineLoop. start()/stop() run it in the background (tests,
    notebooks); serve_forever() in the foreground is what `tinyinfer serve` does."""

    daemon_threads = True
    block_on_close = False  # an idle keep-alive connection must not hold up shutdown

    def __init__(self, engine: LLMEngine, model_id: str, host: str = "127.0.0.1", port: int = 8000,
                 quiet: bool = False, limits: ServerLimits | None = None):
        if engine.tokenizer is None:
            raise ValueError("the model has no tokenizer (tokenizer.json); the server needs one to read text")
        self.limits = ServerLimits() if limits is None else limits
        self.request_queue_size = self.limits.backlog  # listen()'s backlog, read by server_activate
        self.engine_loop = EngineLoop(engine)
        self.model_id, self.created, self.quiet = model_id, int(time.time()), quiet
        self.serving_thread: threading.Thread | None = None
        self.num_connections, self.num_refused = 0, 0
        self.connections_lock = threading.Lock()
        self.refuser = Refuser(grace=min(1.0, self.limits.request_timeout))
        tokenizer = engine.tokenizer
        longest_token = max(len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size))
        self.max_prompt_bytes = self.limits.max_prompt_bytes or min(self.limits.max_body_bytes,
                                                                    longest_token * engine.max_model_len)
        self.max_json_values = self.limits.max_json_values or max(65_536, 2 * engine.max_model_len + 1024)
        # Build the tokenizer's lazy parts now (its regex; a compiled kernel for long words), not in
        # the first client's thread, where compiling would take the GIL from the engine for seconds.
        tokenizer.encode("warm up " + "a" * 200)
        super().__init__((host, port), Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    # ---- connections: a cap, and a polite refusal beyond it --------------------------------------

    def process_request(self, request, client_address):
        with self.connections_lock:
            full = self.num_connections >= self.limits.max_connections
            if full:
                self.num_refused += 1
            else:
                self.num_connections += 1
        if full:
            self.refuse(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except Exception:  # no thread (the system's limit): undo the count
            with self.connections_lock:
                self.num_connections -= 1
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.connections_lock:
                self.num_connections -= 1

    def refuse(self, request: socket.socket):
        body = json.dumps(ApiError(503, f"the server has {self.limits.max_connections} connections open, its "
                                        f"limit (tinyinfer serve --max-connections); retry shortly",
                                   type="server_error", code="too_many_connections").body()).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                f"\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        self.refuser.refuse(request, head + body)

    def server_close(self):
        super().server_close()
        self.refuser.stop()

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], OSError):  # a client that reset or timed out: nothing to report
            return
        super().handle_error(request, client_address)

    # ---- tokenizing, in the handler threads ------------------------------------------------------

    def prompt_ids(self, text: str, param: str) -> list[int]:
        """text -> token ids, its bytes checked before the tokenizer sees it."""
        self.check_prompt_bytes(text, param)
        ids = self.engine_loop.engine.tokenizer.encode(text)
        if not ids:
            raise ApiError(400, f"{param} is empty: give at least one token", param=param, code="invalid_value")
        return ids

    def check_prompt_bytes(self, text: str, param: str):
        limit = self.max_prompt_bytes
        if len(text) > limit:  # a character is at least one byte: no need to encode a huge text
            size = f"at least {len(text)}"
        else:
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError as err:
                raise ApiError(400, f"{param} is not valid Unicode text ({err.reason} at index {err.start})",
                               param=param, code="invalid_value") from None
        if not isinstance(size, int) or size > limit:
            raise ApiError(400, f"{param} is {size} bytes of UTF-8; this server takes at most {limit} "
                                f"(tinyinfer serve --max-prompt-bytes)", param=param, code="prompt_too_large")

    # ---- running in the background ---------------------------------------------------------------

    def start(self):
        self.engine_loop.start()
        self.serving_thread = threading.Thread(target=self.serve_forever, name="tinyinfer-http", daemon=True)
        self.serving_thread.start()
        return self

    def stop(self):
        if self.serving_thread is not None:
            self.shutdown()  # waits for serve_forever to return
        self.engine_loop.stop()  # pending requests get a 503
        self.server_close()


DEFAULT_MAX_PREFILL_SECONDS = 0.05  # tinyinfer serve --max-prefill-ms 50


def make_server(model, model_id: str = "model", host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False, limits: ServerLimits | None = None, **engine_kwargs) -> OpenAIServer:
    """A server over LLMEngine(model, **engine_kwargs); port 0 picks a free port (see .port). Unless
    given, max_prefill_seconds is 0.05: a long prompt pauses the other streams ~50 ms a step."""
    engine_kwargs.setdefault("max_prefill_seconds", DEFAULT_MAX_PREFILL_SECONDS)
    return OpenAIServer(LLMEngine(model, **engine_kwargs), model_id, host, port, quiet, limits)


def serve(model_path, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits | None = None,
          model_id: str | None = None, **engine_kwargs):
    """Load a model (a folder or a .gguf file) and serve it until Ctrl-C. Clients must name it
    model_id in their requests (or leave "model" out); default: the folder's or file's name."""
    from pathlib import Path

    from .. import load

    path = Path(model_path)
    model_id = model_id or path.resolve().name.removesuffix(".gguf")
    server = make_server(load(path), model_id, host, port, limits=limits, **engine_kwargs)
    server.engine_loop.start()
    engine = server.engine_loop.engine
    print(f"serving {path} as {server.model_id!r} on http://{host}:{server.port}/v1 (Ctrl-C to stop); "
          f"max_model_len {engine.max_model_len}, KV cache {engine.num_blocks} blocks of {engine.block_size}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.engine_loop.stop()
        server.server_close()

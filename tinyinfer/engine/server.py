"""An OpenAI-compatible HTTP server over LLMEngine, with the standard library only.

Lesson: lessons/08-serving.py

    tinyinfer serve --model models/tiny --host 127.0.0.1 --port 8000
    curl -N http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
         -d '{"prompt": "def add(a, b):", "max_tokens": 32, "temperature": 0, "stream": true}'

Routes: POST /v1/completions, POST /v1/chat/completions (both whole or streamed as server-sent
events), GET /v1/models, GET /health. Any API key is accepted (the Authorization header is ignored).

Threads, and who may touch what:

    HTTP handler threads (one per connection)        the engine thread (exactly one)
    parse + check the request  --Job------------->   inbox: queue.Queue
                                                     add_request / step / abort
    per-request queue.Queue   <--ACCEPTED, StepOutput, ..., the finished one (or an ApiError)
    write JSON or SSE events; a failed write      -> ("abort", request_id)

The engine is not thread-safe (the scheduler, block manager and KV cache are plain Python state),
so only the engine thread calls it. With no work it sleeps in inbox.get(): no busy-waiting. With
work it drains the inbox without blocking, then runs one step(), so requests join the running
batch at the next step (continuous batching) whatever connection they came from.

Reading the OpenAI request fields and writing OpenAI's response objects live in
tinyinfer/engine/openai_api.py; this module is the HTTP and the threads around them.

Why http.server.ThreadingHTTPServer and not asyncio: every handler is ordinary blocking code that
reads top to bottom (read the body, submit, q.get(), write), and the bridge to the engine thread
is two queue.Queue objects. With asyncio the same bridge needs loop.call_soon_threadsafe and
asyncio.Queue on one side and a thread-safe queue on the other: more ideas for the same result.
The price is one OS thread per open connection, which is fine for tens of clients on a teaching
server (vLLM uses asyncio + uvicorn because it serves thousands). The model, not HTTP, is the
bottleneck here either way.

What this server does not do: n > 1, logprobs, echo, penalties, tools, batched prompts,
authentication, TLS. A client that disconnects is noticed when a write to it fails (streams:
within a token or two); a non-streamed request runs to the end before its write can fail.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .llm import LLMEngine, StepOutput
from .openai_api import (ApiError, Job, chat_prompt, chunk, parse_prompt, parse_sampling, parse_stream,
                         text_chunk, usage, whole_response)

MAX_BODY_BYTES = 1 << 20  # 1 MiB: checked against Content-Length before reading a byte
ACCEPTED = "accepted"  # first message on a request's queue when the engine took it


# ---- the engine thread ---------------------------------------------------------------------------


class EngineLoop:
    """Owns an LLMEngine and drives it from one thread; other threads talk to it through queues."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.inbox: queue.Queue = queue.Queue()  # ("add", job, outbox) | ("abort", id) | ("stop",)
        self.listeners: dict[str, queue.Queue] = {}  # live request id -> its outbox (engine thread only)
        self.aborted_ids = deque(maxlen=1000)  # the last requests aborted for clients that left (for tests)
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
            # Idle: sleep in get() until a command arrives. Busy: take what is there and step.
            commands = [] if self.engine.has_unfinished_requests() else [self.inbox.get()]
            while True:
                try:
                    commands.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            for command in commands:
                if command[0] == "stop":
                    self.fail_all(ApiError(503, "the server is shutting down", type="server_error"))
                    return
                if command[0] == "add":
                    self.add(*command[1:])
                elif command[0] == "abort" and self.engine.abort(command[1]):
                    self.listeners.pop(command[1], None)
                    self.aborted_ids.append(command[1])
            if self.engine.has_unfinished_requests():
                self.step()

    def add(self, job: Job, outbox: queue.Queue):
        try:
            self.listeners[job.request_id] = outbox
            self.engine.add_request(*self.fit_to_context(job), request_id=job.request_id)
        except ApiError as err:
            del self.listeners[job.request_id]
            outbox.put(err)
            return
        except (ValueError, TypeError) as err:  # the engine's own checks name what is wrong
            del self.listeners[job.request_id]
            outbox.put(ApiError(400, str(err), param=job.prompt_param))
            return
        outbox.put(ACCEPTED)

    def fit_to_context(self, job: Job):
        """-> (prompt ids, params with max_tokens set), or a 400 if the context cannot hold them."""
        ids = self.engine.tokenizer.encode(job.prompt) if isinstance(job.prompt, str) else job.prompt
        n_ctx = self.engine.model.config.n_ctx
        max_tokens = n_ctx - len(ids) if job.max_tokens is None else job.max_tokens
        if max_tokens < 1 or len(ids) + max_tokens > n_ctx:
            why = ("leaving no room to generate" if job.max_tokens is None
                   else f"and max_tokens is {max_tokens}, together {len(ids) + max_tokens}, more than")
            raise ApiError(400, f"{job.prompt_param} is {len(ids)} tokens, {why} the model's context "
                                f"of {n_ctx} tokens", param=job.prompt_param, code="context_length_exceeded")
        return ids, replace(job.params, max_tokens=max_tokens)

    def step(self):
        try:
            outputs = self.engine.step()
        except Exception:  # a bug in a step must not leave every client waiting forever
            traceback.print_exc()
            self.fail_all(ApiError(500, "the engine failed while running a step", type="server_error"))
            return
        for out in outputs:
            outbox = self.listeners.get(out.request_id)
            if outbox is not None:
                outbox.put(out)
            if out.finished:
                self.listeners.pop(out.request_id, None)

    def fail_all(self, err: ApiError):
        for request_id, outbox in self.listeners.items():
            self.engine.abort(request_id)
            outbox.put(err)
        self.listeners.clear()


# ---- HTTP ----------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses its connection
    server_version = "tinyinfer"
    timeout = 60  # seconds a socket read or write may stall before the connection is dropped
    routes = {"/v1/completions": ("POST", "completions"), "/v1/chat/completions": ("POST", "chat"),
              "/v1/models": ("GET", "models"), "/health": ("GET", "health")}

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def dispatch(self, method: str):
        self.headers_sent = False
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path not in self.routes:
                raise ApiError(404, f"no route {path!r}; this server has {', '.join(self.routes)}",
                               code="not_found")
            allowed, name = self.routes[path]
            if method != allowed:
                raise ApiError(405, f"{path} takes {allowed}, not {method}", code="method_not_allowed",
                               allow=allowed)
            getattr(self, "route_" + name)()
        except ApiError as err:
            self.send_error_json(err)
        except OSError:  # the client left while we wrote to it: nothing to answer
            self.close_connection = True
        except Exception:
            traceback.print_exc()
            self.send_error_json(ApiError(500, "internal server error", type="server_error"))

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    # ---- plumbing ----------------------------------------------------------------------------

    def read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a POST needs a Content-Length header", code="length_required")
        if not length.isdigit():
            raise ApiError(400, f"Content-Length must be a number of bytes, got {length!r}")
        if int(length) > MAX_BODY_BYTES:  # before reading: a huge body is refused, not buffered
            raise ApiError(413, f"the request body is {int(length)} bytes; the limit is {MAX_BODY_BYTES}",
                           code="body_too_large")
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            raise ApiError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None
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
        self.wfile.write(data)

    def send_error_json(self, err: ApiError):
        if self.headers_sent:  # too late for a status line; the stream writer reports in-band
            return
        try:
            self.send_json(err.status, err.body(), close=True, allow=err.allow)
        except OSError:
            self.close_connection = True

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
        alive = self.server.engine_loop.thread.is_alive()
        self.send_json(200 if alive else 503, {"status": "ok" if alive else "engine thread stopped"})

    def route_models(self):
        model = {"id": self.server.model_id, "object": "model", "created": self.server.created,
                 "owned_by": "tinyinfer", "max_model_len": self.server.engine_loop.engine.model.config.n_ctx}
        self.send_json(200, {"object": "list", "data": [model]})

    def route_completions(self):
        body = self.read_json()
        prompt = parse_prompt(body)
        params, max_tokens = parse_sampling(body, default_max_tokens=16)  # OpenAI's default for completions
        self.run_job(self.make_job("cmpl", prompt, params, max_tokens, "prompt", chat=False), *parse_stream(body))

    def route_chat(self):
        body = self.read_json()
        prompt = chat_prompt(body.get("messages"))
        params, max_tokens = parse_sampling(body, default_max_tokens=None)  # None: fill the context
        self.run_job(self.make_job("chatcmpl", prompt, params, max_tokens, "messages", chat=True), *parse_stream(body))

    def make_job(self, prefix, prompt, params, max_tokens, prompt_param, chat) -> Job:
        return Job(f"{prefix}-{uuid.uuid4().hex}", prompt, params, max_tokens, prompt_param, chat,
                   self.server.model_id, int(time.time()))

    # ---- one request through the engine --------------------------------------------------------

    def run_job(self, job: Job, stream: bool, include_usage: bool):
        outbox = self.server.engine_loop.submit(job)
        first = outbox.get()  # ACCEPTED or an ApiError (too long, bad token id, shutting down)
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
                if item.new_text or finished:  # text held back (a possible stop string) sends nothing
                    self.send_event(text_chunk(job, item.new_text, item.finish_reason if finished else None))
                if finished and include_usage:
                    self.send_event(chunk(job, [], usage=usage(item.output)))
            self.send_event(b"[DONE]")
            self.write_chunk(b"")
        except OSError:  # BrokenPipeError, ConnectionResetError, a timeout: the client is gone
            self.close_connection = True
            self.log_message("client left during %s; aborting it", job.request_id)
        return finished


class OpenAIServer(ThreadingHTTPServer):
    """ThreadingHTTPServer + one EngineLoop. start()/stop() run it in the background (tests,
    notebooks); serve_forever() in the foreground is what `tinyinfer serve` does."""

    daemon_threads = True
    block_on_close = False  # an idle keep-alive connection must not hold up shutdown

    def __init__(self, engine: LLMEngine, model_id: str, host: str = "127.0.0.1", port: int = 8000,
                 quiet: bool = False):
        if engine.tokenizer is None:
            raise ValueError("the model has no tokenizer (tokenizer.json); the server needs one to read text")
        super().__init__((host, port), Handler)
        self.engine_loop = EngineLoop(engine)
        self.model_id, self.created, self.quiet = model_id, int(time.time()), quiet
        self.serving_thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

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


def make_server(model, model_id: str = "model", host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False, **engine_kwargs) -> OpenAIServer:
    """A server over LLMEngine(model, **engine_kwargs); port 0 picks a free port (see .port)."""
    return OpenAIServer(LLMEngine(model, **engine_kwargs), model_id, host, port, quiet)


def serve(model_path, host: str = "127.0.0.1", port: int = 8000, **engine_kwargs):
    """Load a model folder and serve it until Ctrl-C; the model id is the folder's name."""
    from pathlib import Path

    from .. import load

    path = Path(model_path)
    server = make_server(load(path), path.resolve().name, host, port, **engine_kwargs)
    server.engine_loop.start()
    print(f"serving {path} as {server.model_id!r} on http://{host}:{server.port}/v1 (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.engine_loop.stop()
        server.server_close()

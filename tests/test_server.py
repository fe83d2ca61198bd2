"""The OpenAI-compatible server (tinyinfer/engine/server.py), driven over HTTP on 127.0.0.1.

What must hold: a streamed answer is the whole answer cut into events; every client of a shared
engine gets exactly what its prompt alone would give; a client that leaves frees its blocks;
bad requests get the right status and an OpenAI-shaped error naming the parameter; and the
official openai client can talk to it."""
import http.client
import json
import socket
import threading
import time

import pytest

import tinyinfer
from conftest import ROOT
from tinyinfer.engine import LLM, SamplingParams
from tinyinfer.engine.openai_api import chat_prompt
from tinyinfer.engine.server import ServerLimits, make_server

MAX_BODY_BYTES = ServerLimits().max_body_bytes


@pytest.fixture(scope="module")
def model():
    return tinyinfer.load(f"{ROOT}/models/tiny")


@pytest.fixture(scope="module")
def server(model):
    srv = make_server(model, model_id="tiny", host="127.0.0.1", port=0, quiet=True).start()
    yield srv
    srv.stop()
    assert not srv.engine_loop.thread.is_alive()


@pytest.fixture(scope="module")
def reference(model):
    """Greedy text of a prompt run alone through the offline engine (its own LLM, not the server's)."""
    llm = LLM(model)

    def run(prompt, max_tokens):
        return llm.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0))[0]
    return run


# ---- HTTP helpers ------------------------------------------------------------------------------


def request(server, method, path, body=None, raw=None, headers=None):
    """-> (status, parsed JSON body, response headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), resp.headers
    finally:
        conn.close()


def post(server, path, body):
    status, payload, _ = request(server, "POST", path, body)
    assert status == 200, payload
    return payload


def stream(server, path, body):
    """-> the decoded events of a streamed request; checks the framing and the final [DONE]."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps({**body, "stream": True}).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        text = resp.read().decode()
    finally:
        conn.close()
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""], text[-200:]
    assert all(e.startswith("data: ") for e in events[:-1])
    return [json.loads(e[len("data: "):]) for e in events[:-2]]


def completion_body(prompt, max_tokens=12, **kw):
    return {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **kw}


def chat_body(content, max_tokens=12, **kw):
    return {"model": "tiny", "messages": [{"role": "system", "content": "You write Python."},
                                          {"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0, **kw}


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ---- simple routes -------------------------------------------------------------------------------


def test_health_and_models(server):
    status, payload, _ = request(server, "GET", "/health")
    assert status == 200 and payload["status"] == "ok"
    blocks = payload["kv_cache_blocks"]  # idle: every block is free (a benchmark checks for leaks so)
    assert blocks["free"] == blocks["total"] == server.engine_loop.engine.num_blocks and blocks["in_use"] == 0
    assert payload["requests"] == {"running": 0, "waiting": 0}
    status, payload, _ = request(server, "GET", "/v1/models")
    assert status == 200 and payload["object"] == "list"
    assert [m["id"] for m in payload["data"]] == ["tiny"]  # the model folder's name


# ---- completions ---------------------------------------------------------------------------------


def test_completion_whole_is_greedy_reference(server, reference):
    prompt = "def add(a, b):"
    out = post(server, "/v1/completions", completion_body(prompt, 16))
    ref = reference(prompt, 16)
    assert out["object"] == "text_completion" and out["model"] == "tiny" and out["id"].startswith("cmpl-")
    [choice] = out["choices"]
    assert choice["text"] == ref.text and choice["finish_reason"] == ref.finish_reason
    assert out["usage"] == {"prompt_tokens": len(ref.prompt_token_ids), "completion_tokens": len(ref.token_ids),
                            "total_tokens": len(ref.prompt_token_ids) + len(ref.token_ids)}


@pytest.mark.parametrize("sampling", [dict(temperature=0),
                                      dict(temperature=0.9, top_p=0.95, top_k=40, seed=7),
                                      dict(temperature=0, stop=["\n", "self"])])
def test_completion_stream_concatenates_to_whole(server, sampling):
    body = {**completion_body("class Stack:\n    def push(self, item):", 20), **sampling}
    whole = post(server, "/v1/completions", body)["choices"][0]
    chunks = stream(server, "/v1/completions", body)
    assert all(c["object"] == "text_completion" and c["model"] == "tiny" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]
    if "stop" in sampling:
        assert "\n" not in whole["text"] and "self" not in whole["text"]


def test_completion_token_id_prompt(server, reference, model):
    ids = model.tokenizer.encode("import os\n")
    out = post(server, "/v1/completions", completion_body(ids, 10))
    assert out["choices"][0]["text"] == reference(ids, 10).text


def test_stream_usage_chunk_on_request(server):
    chunks = stream(server, "/v1/completions", completion_body("x = ", 5, stream_options={"include_usage": True}))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


# ---- chat ----------------------------------------------------------------------------------------


def test_chat_whole_and_streamed(server, reference):
    body = chat_body("Write a function that adds two numbers.", 16)
    ref = reference(chat_prompt(body["messages"]), 16)
    whole = post(server, "/v1/chat/completions", body)
    assert whole["object"] == "chat.completion" and whole["id"].startswith("chatcmpl-")
    [choice] = whole["choices"]
    assert choice["message"] == {"role": "assistant", "content": ref.text}
    assert choice["finish_reason"] == ref.finish_reason and whole["usage"]["completion_tokens"] == len(ref.token_ids)

    chunks = stream(server, "/v1/chat/completions", body)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:])
    assert "".join(d.get("content", "") for d in deltas) == ref.text
    assert chunks[-1]["choices"][0]["finish_reason"] == ref.finish_reason
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_chat_template():
    assert chat_prompt([{"role": "user", "content": "hi"}]) == "<|user|>\nhi\n<|assistant|>\n"


# ---- many clients, one engine --------------------------------------------------------------------


def test_concurrent_clients_each_get_their_own_greedy_output(server, reference):
    prompts = ["def f(x):", "import sys\n", "class A:", "for i in range(", "# sort a list\n", "return "]
    expected = [reference(p, 14).text for p in prompts]  # each alone, before the server is busy
    results, errors = [None] * len(prompts), []
    start = threading.Barrier(len(prompts))

    def client(i):
        try:
            start.wait()
            body = completion_body(prompts[i], 14)
            if i % 2:  # half stream, half wait for the whole answer
                results[i] = "".join(c["choices"][0]["text"] for c in stream(server, "/v1/completions", body))
            else:
                results[i] = post(server, "/v1/completions", body)["choices"][0]["text"]
        except Exception as err:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results == expected


def test_disconnect_mid_stream_aborts_and_frees_blocks(server, monkeypatch):
    engine = server.engine_loop.engine
    # The tiny model can write all 200 tokens into the socket's buffers before the client's reset
    # arrives, and then the request simply finishes. So each step waits until the client has gone
    # (every event after the first is written to a connection already reset), then takes 10 ms
    # (200 tokens last 2 s, ample time for the handler to see the reset and abort).
    client_gone = threading.Event()
    step = server.engine_loop.step

    def step_after_client_left():
        step()
        client_gone.wait(30)
        time.sleep(0.01)
    monkeypatch.setattr(server.engine_loop, "step", step_after_client_left)
    try:
        body = json.dumps(completion_body("def main():", 200, ignore_eos=True, stream=True)).encode()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while b"data: {" not in received or b"\n\n" not in received.split(b"data: {", 1)[1]:
            received += sock.recv(4096)
        first = json.loads(b"{" + received.split(b"data: {", 1)[1].split(b"\n\n", 1)[0])
        # linger 0: close sends a reset at once, like a killed client
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    finally:
        client_gone.set()  # no step waits after this, whatever happened above
    assert wait_until(lambda: first["id"] in server.engine_loop.aborted_ids), "request was not aborted"
    bm = engine.block_manager
    assert wait_until(lambda: not engine.sequences and not bm.used_block_ids)
    assert bm.num_free_blocks == engine.num_blocks
    # and the server still answers
    assert post(server, "/v1/completions", completion_body("x", 3))["choices"][0]["finish_reason"]


# ---- errors --------------------------------------------------------------------------------------


def check_error(status, payload, expected_status, param=None):
    assert status == expected_status, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"} and payload["error"]["message"]
    if param is not None:
        assert payload["error"]["param"] == param and param.split(".")[0].split("[")[0] in payload["error"]["message"]


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, "top_p"),
    ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, "stop[0]"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
    ("/v1/completions", {"max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": [1, 99999]}, "prompt"),  # out of the vocabulary: the engine says so
    ("/v1/completions", {"prompt": "def " * 300}, "prompt"),  # longer than the context
    ("/v1/completions", {"prompt": "def f():", "max_tokens": 300}, "prompt"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 300}]}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 123}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": ["hi"]}, "messages[0]"),
    # what cannot be sampled is refused up front, not inside a step shared with other requests
    ("/v1/completions", {"prompt": "x", "temperature": 1e-320}, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": True}, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": "0.5"}, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_k": 1.5}, "top_k"),
    ("/v1/completions", {"prompt": "x", "seed": -1}, "seed"),
    ("/v1/completions", {"prompt": "x", "seed": 2**64}, "seed"),
    ("/v1/completions", {"prompt": "x", "max_tokens": True}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "ignore_eos": "no"}, "ignore_eos"),
    ("/v1/completions", {"prompt": "x", "stop": 123}, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", 5]}, "stop[1]"),
    ("/v1/completions", {"prompt": "x", "stop": ["s"] * 17}, "stop"),  # more than --max-stop-strings
    ("/v1/completions", {"prompt": "x", "stop": ["s" * 257]}, "stop[0]"),  # more than --max-stop-bytes
    ("/v1/completions", {"prompt": "x", "stop": "\ud800"}, "stop[0]"),  # a lone surrogate
    ("/v1/completions", {"prompt": "\ud800"}, "prompt"),
    ("/v1/completions", {"prompt": [True, False]}, "prompt"),
    ("/v1/completions", {"prompt": list(range(300))}, "prompt"),  # more ids than the context
    ("/v1/completions", {"prompt": "x", "model": 5}, "model"),
    ("/v1/completions", {"prompt": "x", "stop": json.loads("[" * 900 + "]" * 900)}, "stop[0]"),  # quoted short
])
def test_bad_parameters_are_400_naming_the_parameter(server, path, body, param):
    status, payload, _ = request(server, "POST", path, body)
    check_error(status, payload, 400, param)
    if "context" in payload["error"]["message"]:
        assert payload["error"]["code"] == "context_length_exceeded"


def test_malformed_json_is_400(server):
    status, payload, _ = request(server, "POST", "/v1/completions", raw=b'{"prompt": "x",')
    check_error(status, payload, 400)
    status, payload, _ = request(server, "POST", "/v1/completions", raw=b'["not", "an", "object"]')
    check_error(status, payload, 400)
    status, payload, _ = request(server, "POST", "/v1/completions", raw=b"[" * 60_000)  # deeper than recursion
    check_error(status, payload, 400)
    assert "nested" in payload["error"]["message"]
    status, payload, _ = request(server, "POST", "/v1/completions", raw=b'{"prompt": "x"}',
                                 headers={"Content-Length": "\u00b2"})  # "²" is a digit to str.isdigit()
    check_error(status, payload, 400)
    assert "Content-Length" in payload["error"]["message"]


def test_wrong_content_type_is_415_and_unknown_model_404(server):
    status, payload, _ = request(server, "POST", "/v1/completions", raw=b'{"prompt": "x"}',
                                 headers={"Content-Type": "text/plain"})
    check_error(status, payload, 415)
    status, payload, _ = request(server, "POST", "/v1/completions", {"model": "gpt-4", "prompt": "x"})
    check_error(status, payload, 404, "model")
    assert payload["error"]["code"] == "model_not_found"
    # a charset parameter is fine, and so is the served model's name
    status, payload, _ = request(server, "POST", "/v1/completions", completion_body("x", 2),
                                 headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 200, payload


def raw_exchange(server, data: bytes) -> tuple[int, dict, bytes]:
    """Send raw bytes, read until the server closes -> (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("data,status", [
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),                   # request line too long
    (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),  # a header line too long
    (b"GET /health HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),        # too many headers
    (b"BREW /health HTTP/1.1\r\n\r\n", 501),                                     # a method nobody serves
    (b"GET /health HTTP/9.0\r\n\r\n", 505),
    (b"nonsense\r\n\r\n", 400),
])
def test_the_standard_librarys_own_errors_are_json(server, data, status):
    got, headers, body = raw_exchange(server, data)
    assert got == status and headers["Content-Type"] == "application/json"
    check_error(got, json.loads(body), status)


def test_head_and_options(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("HEAD", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json" and resp.read() == b""
    conn.request("OPTIONS", "/v1/chat/completions")
    resp = conn.getresponse()
    assert resp.status == 204 and resp.headers["Allow"] == "POST, OPTIONS" and resp.read() == b""
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("HEAD", "/v1/completions")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.headers["Content-Type"] == "application/json" and resp.read() == b""
    conn.close()


def test_oversized_body_is_413_before_reading_it(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()  # no body sent: the server must answer from the header alone
    resp = conn.getresponse()
    check_error(resp.status, json.loads(resp.read()), 413)
    conn.close()


def test_unknown_path_404_and_wrong_method_405(server):
    status, payload, _ = request(server, "GET", "/v1/nothing")
    check_error(status, payload, 404)
    status, payload, headers = request(server, "GET", "/v1/completions")
    check_error(status, payload, 405)
    assert headers["Allow"] == "POST, OPTIONS"
    status, payload, _ = request(server, "POST", "/health", {})
    check_error(status, payload, 405)


def test_any_api_key_is_accepted(server):
    status, _, _ = request(server, "GET", "/v1/models", headers={"Authorization": "Bearer whatever"})
    assert status == 200


# ---- the official client -------------------------------------------------------------------------


def test_openai_client(server, reference):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="anything", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]

    prompt = "def area(r):"
    ref = reference(prompt, 12)
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    assert out.choices[0].text == ref.text and out.usage.completion_tokens == len(ref.token_ids)
    events = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, stream=True)
    assert "".join(e.choices[0].text for e in events) == ref.text

    messages = [{"role": "user", "content": "Sort a list."}]
    chat_ref = reference(chat_prompt(messages), 12)
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == chat_ref.text
    events = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    assert "".join(e.choices[0].delta.content or "" for e in events) == chat_ref.text
    assert events[-1].choices[0].finish_reason == chat_ref.finish_reason

    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=4, n=2)


def test_cli_has_serve():
    from tinyinfer.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "tiny", "--port", "0"])
    assert (args.host, args.port, args.func.__name__) == ("127.0.0.1", 0, "cmd_serve")


def test_too_many_json_values_are_refused_before_parsing(server):
    for body in ({"prompt": "x", "stop": [f"s{i}" for i in range(90_000)]},  # 90k stop strings
                 {"prompt": "x", "logit_bias": [[]] * 70_000}):              # slow to parse, few bytes
        status, payload, _ = request(server, "POST", "/v1/completions", body)
        check_error(status, payload, 413)
        assert payload["error"]["code"] == "too_many_values" and "--max-json-values" in payload["error"]["message"]
    # a prompt of ids as long as the context is fine (its commas are within the default limit)
    status, payload, _ = request(server, "POST", "/v1/completions", {"prompt": [1] * 250, "max_tokens": 2})
    assert status == 200, payload


# ---- chat with the model's own template ------------------------------------------------------------


class ChatMLTokenizer:
    """The tiny model's tokenizer plus a ChatML chat template and an end-of-turn id, as a chat model's
    tokenizer has them: the server must render with it, encode with encode_chat (or, for a tokenizer
    without one, encode the rendered text with special=True) and stop at end_id."""
    chat_template = "{% for message in messages %}...chatml...{% endfor %}"

    def __init__(self, inner, end_id, with_encode_chat=True):
        self.inner, self.stop_ids, self.calls = inner, frozenset({end_id}), []
        if not with_encode_chat:
            self.encode_chat = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def apply_chat_template(self, messages, add_generation_prompt=True):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def encode(self, text, special=True):
        self.calls.append(f"encode(special={special})")
        return self.inner.encode(text)

    def encode_chat(self, messages, add_generation_prompt=True):
        self.calls.append("encode_chat")
        return self.inner.encode(self.apply_chat_template(messages, add_generation_prompt))


@pytest.mark.parametrize("with_encode_chat", [True, False])
def test_chat_uses_the_tokenizers_template_and_stops_at_end_of_turn(model, with_encode_chat):
    messages = [{"role": "user", "content": "Write a loop."}]
    probe = ChatMLTokenizer(model.tokenizer, end_id=-1)
    prompt_ids = model.tokenizer.encode(probe.apply_chat_template(messages))
    free = LLM(model).generate(prompt_ids, SamplingParams(max_tokens=12, ignore_eos=True))[0].token_ids
    k = max(i for i, t in enumerate(free) if t not in free[:i])  # the last token that is new where it appears
    tokenizer = ChatMLTokenizer(model.tokenizer, end_id=free[k], with_encode_chat=with_encode_chat)
    chat_model = tinyinfer.model.Model(model.config, model.params, tokenizer)
    srv = make_server(chat_model, model_id="chat", port=0, quiet=True).start()
    try:
        tokenizer.calls.clear()
        status, out, _ = request(srv, "POST", "/v1/chat/completions",
                                 {"messages": messages, "max_tokens": 12, "temperature": 0})
        assert status == 200, out
        assert tokenizer.calls == (["encode_chat"] if with_encode_chat else ["encode(special=True)"])
        assert out["usage"]["prompt_tokens"] == len(prompt_ids)
        assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] == k + 1
        assert out["choices"][0]["message"]["content"] == model.tokenizer.decode(free[:k])
        # the model without a template keeps tinyinfer's own (see test_chat_template)
    finally:
        srv.stop()

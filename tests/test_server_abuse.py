"""The server (tinyinfer/engine/server.py) under hostile and heavy load: one bad request must never
hurt another.

What must hold: a request that fails inside a step fails alone (its client gets a clear error, its
blocks come back, every other client's greedy text is what it would be alone); sizes are refused
before the work they would cost (a prompt's bytes before tokenizing it); the server's own work
for a request runs in that request's thread, never on the engine thread; connections beyond the
cap get a JSON 503 and slow clients are dropped at the deadline; and 64 clients at once, some
leaving mid-stream, one poisoned and a burst of 1 MB prompts beside them, are all served, with
every block free afterwards and the memory back where it was."""
import gc
import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest

import tinyinfer
from conftest import ROOT
from tinyinfer.engine import LLM, SamplingParams
from tinyinfer.engine.server import ServerLimits, make_server


@pytest.fixture(scope="module")
def model():
    return tinyinfer.load(f"{ROOT}/models/tiny")


@pytest.fixture(scope="module")
def solo(model):
    """Greedy token ids of a prompt run alone through the offline engine, never the server's."""
    llm, cache = LLM(model), {}

    def run(prompt: str, max_tokens: int) -> list[int]:
        if (prompt, max_tokens) not in cache:
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            cache[prompt, max_tokens] = llm.generate(prompt, params)[0].token_ids
        return cache[prompt, max_tokens]
    return run


def poison(engine, bad_prompt: list[int], where: str):
    """Make requests whose prompt is bad_prompt fail inside the engine's step: in the packed forward
    (every member of that batch is a suspect) or in their own sampling (NaN logits)."""
    runner = engine.model_runner
    forward, sample = runner.forward, runner.sample

    def is_bad(seq):
        return seq.token_ids[:seq.num_prompt_tokens] == bad_prompt

    def poisoned_forward(seqs, num_new_tokens, all_columns=False):
        if any(is_bad(s) for s in seqs):
            raise FloatingPointError("poisoned forward")
        return forward(seqs, num_new_tokens, all_columns)

    def poisoned_sample(seq, n, row):
        return sample(seq, n, np.full_like(row, np.nan) if is_bad(seq) else row)
    if where == "forward":
        runner.forward = poisoned_forward
    else:
        runner.sample = poisoned_sample


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


# ---- HTTP helpers ------------------------------------------------------------------------------


def post(port, body, headers=None, timeout=60) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def stream(port, body, leave_after_first=False, timeout=60) -> dict:
    """One streamed completion -> {"status", "text", "events", "error", "done"}; with
    leave_after_first the client resets the connection after its first text event."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = json.dumps({**body, "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    result = {"status": None, "text": "", "events": [], "error": None, "done": False}
    reader = sock.makefile("rb")
    try:
        result["status"] = int(reader.readline().split()[1])
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if result["status"] != 200:  # a JSON error, not a stream
            result["error"] = json.loads(reader.read(int(headers["content-length"])))["error"]
            return result
        while True:
            size = int(reader.readline().strip(), 16)  # chunked transfer
            if size == 0:
                break
            event = reader.read(size + 2)[:-2].decode()
            assert event.startswith("data: ") and event.endswith("\n\n"), event
            payload = event[len("data: "):-2]
            if payload == "[DONE]":
                result["done"] = True
                continue
            payload = json.loads(payload)
            if "error" in payload:
                result["error"] = payload["error"]
                continue
            result["events"].append(payload)
            result["text"] += payload["choices"][0]["text"] if payload["choices"] else ""
            if leave_after_first and result["text"]:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return result
    finally:
        reader.close()
        sock.close()
    return result


def completion(prompt, max_tokens, **kw):
    return {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            **kw}


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def engine_is_clean(server) -> bool:
    engine = server.engine_loop.engine
    bm = engine.block_manager
    return (not engine.sequences and not engine.has_unfinished_requests() and not bm.used_block_ids
            and bm.num_free_blocks == engine.num_blocks and not server.engine_loop.listeners)


# ---- a failure is one request's ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["forward", "sample"])
def test_a_poisoned_request_fails_alone(model, solo, where):
    server = make_server(model, model_id="tiny", port=0, quiet=True).start()
    try:
        tok = model.tokenizer
        bad = "# this one is poisoned\n"
        poison(server.engine_loop.engine, tok.encode(bad), where)
        prompts = ["def f(x):", "import os\n", "class A:", bad, "for i in range("]
        results = [None] * 2 * len(prompts)
        gate = threading.Barrier(len(results))

        def client(i):
            gate.wait()
            body = completion(prompts[i % len(prompts)], 10)
            results[i] = stream(server.port, body) if i < len(prompts) else post(server.port, body)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i, p in enumerate(prompts * 2):
            got = results[i]
            if p == bad:
                if i < len(prompts):  # streamed: the 200 went out first, the error travels in-band
                    assert got["status"] == 200 and got["done"] and got["error"]["code"] == "generation_failed"
                else:
                    assert got[0] == 500 and got[1]["error"]["code"] == "generation_failed"
                    assert "poisoned" in got[1]["error"]["message"] or "NaN" in got[1]["error"]["message"]
            else:
                text = got["text"] if i < len(prompts) else got[1]["choices"][0]["text"]
                assert text == tok.decode(solo(p, 10)), (i, p)
        assert len(server.engine_loop.failed_ids) == 2
        assert wait_until(lambda: engine_is_clean(server))
        # and the same server answers as before
        assert post(server.port, completion("def f(x):", 10))[1]["choices"][0]["text"] == tok.decode(solo("def f(x):", 10))
    finally:
        server.stop()


# ---- sizes before work, and work off the engine thread ----------------------------------------------


def test_prompt_bytes_are_checked_before_tokenizing(model, monkeypatch):
    server = make_server(model, model_id="tiny", port=0, quiet=True, limits=ServerLimits(max_prompt_bytes=100)).start()
    calls = []
    encode = model.tokenizer.encode
    monkeypatch.setattr(model.tokenizer, "encode", lambda text, *a, **k: calls.append(len(text)) or encode(text, *a, **k))
    try:
        status, payload = post(server.port, completion("é" * 51, 4))  # 102 bytes in 51 characters
        assert status == 400 and payload["error"]["param"] == "prompt"
        assert "102 bytes" in payload["error"]["message"] and "--max-prompt-bytes" in payload["error"]["message"]
        status, payload = post(server.port, completion("x" * 1_000_000, 4))
        assert status == 400 and payload["error"]["code"] == "prompt_too_large"
        assert calls == []  # neither reached the tokenizer
        status, payload = post(server.port, completion("x" * 100, 4))
        assert status != 400 or payload["error"]["code"] == "context_length_exceeded"
        assert calls == [100]
    finally:
        server.stop()


def test_default_prompt_limit_is_what_the_context_can_hold(model):
    server = make_server(model, model_id="tiny", port=0, quiet=True)
    try:
        tok, engine = model.tokenizer, server.engine_loop.engine
        longest = max(len(tok.decode_bytes([i])) for i in range(tok.vocab_size))
        assert server.max_prompt_bytes == min(server.limits.max_body_bytes, longest * engine.max_model_len)
    finally:
        server.server_close()


def test_tokenizing_and_stop_matchers_stay_off_the_engine_thread(model, monkeypatch):
    from tinyinfer.engine import detokenizer

    threads = []
    encode = model.tokenizer.encode
    monkeypatch.setattr(model.tokenizer, "encode",
                        lambda *a, **k: threads.append(threading.current_thread().name) or encode(*a, **k))
    matcher_init = detokenizer.StopMatcher.__init__

    def spy_init(self, stop):
        threads.append(threading.current_thread().name)
        matcher_init(self, stop)
    monkeypatch.setattr(detokenizer.StopMatcher, "__init__", spy_init)
    server = make_server(model, model_id="tiny", port=0, quiet=True).start()
    try:
        stream(server.port, completion("def f(x):", 8, stop=["zz", "\n\n"]))
        post(server.port, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                           "stop": "qq"}, )
        assert threads and "tinyinfer-engine" not in threads
    finally:
        server.stop()


# ---- connections ----------------------------------------------------------------------------------


def test_connections_beyond_the_cap_get_a_json_503(model):
    server = make_server(model, model_id="tiny", port=0, quiet=True,
                         limits=ServerLimits(max_connections=2, request_timeout=5)).start()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    try:
        assert wait_until(lambda: server.num_connections == 2)
        status, payload = post(server.port, completion("x", 2))
        assert status == 503 and payload["error"]["code"] == "too_many_connections"
        assert "--max-connections" in payload["error"]["message"]
        for sock in idle:
            sock.close()
        assert wait_until(lambda: server.num_connections == 0)
        assert post(server.port, completion("x", 2))[0] == 200
    finally:
        server.stop()


def test_slow_clients_are_dropped_at_the_deadline(model):
    """A client sending its headers a byte at a time is cut off after request_timeout in total,
    however steadily it trickles, and a normal client is served meanwhile."""
    server = make_server(model, model_id="tiny", port=0, quiet=True,
                         limits=ServerLimits(request_timeout=1.0)).start()
    try:
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(20)]
        start = time.monotonic()
        for sock in slow:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nX-Slow: ")
        closed = set()
        while len(closed) < len(slow) and time.monotonic() - start < 8:
            for i, sock in enumerate(slow):  # one more byte each, every 0.2 s: each read is "in time"
                if i not in closed:
                    try:
                        sock.sendall(b"a")
                        sock.settimeout(0.01)
                        if sock.recv(1) == b"":
                            closed.add(i)
                    except (TimeoutError, BlockingIOError):
                        pass
                    except OSError:
                        closed.add(i)
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow clients still held after {elapsed:.1f} s"
        assert post(server.port, completion("x", 2))[0] == 200
        assert wait_until(lambda: server.num_connections == 0)
        for sock in slow:
            sock.close()
    finally:
        server.stop()


# ---- everything at once ---------------------------------------------------------------------------


def test_64_clients_one_poisoned_some_leaving_and_a_burst_of_huge_prompts(model, solo):
    """64 streaming clients connect at once: 8 leave after their first token, 1 is poisoned; 40
    prompts of 1 MB arrive meanwhile. Every other client gets exactly its solo greedy text, the
    engine ends with every block free, and the burst leaves the memory where it was."""
    tok = model.tokenizer
    prompts = ["def f(x):", "import os\n", "class A:", "for i in range(", "# sort a list\n", "return ",
               "x = [", "while True:"]
    bad = "# poisoned\n"
    server = make_server(model, model_id="tiny", port=0, quiet=True, max_num_seqs=32).start()
    poison(server.engine_loop.engine, tok.encode(bad), "forward")
    n_clients, leaving = 64, set(range(3, 64, 8))
    bad_client = 20
    plan = {i: (prompts[i % len(prompts)], 6 + i % 11) for i in range(n_clients)}  # 6..16 new tokens
    plan[bad_client] = (bad, 12)
    for prompt, max_tokens in plan.values():
        if prompt != bad:
            solo(prompt, max_tokens)  # the references, before the server gets busy
    try:
        results, errors = {}, []
        huge = [None] * 40
        gate = threading.Barrier(n_clients + 1)

        def client(i):
            try:
                gate.wait()
                prompt, max_tokens = plan[i]
                results[i] = stream(server.port, completion(prompt, max_tokens), leave_after_first=i in leaving)
            except Exception as err:  # noqa: BLE001 (reported below, in the test's thread)
                errors.append((i, repr(err)))

        def burst():
            gate.wait()
            for j in range(len(huge)):
                huge[j] = post(server.port, completion("x" * 1_000_000, 4))[0]

        gc.collect()
        rss_before = rss_bytes()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
        threads.append(threading.Thread(target=burst))
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors[:5]
        assert huge == [400] * len(huge)
        for i, (prompt, max_tokens) in plan.items():
            got = results[i]
            assert got["status"] == 200, (i, got)
            if i == bad_client:
                assert got["error"]["code"] == "generation_failed" and got["done"]
            elif i not in leaving:
                assert got["error"] is None and got["done"], (i, got)
                assert got["text"] == tok.decode(solo(prompt, max_tokens)), (i, prompt, max_tokens)
        assert wait_until(lambda: engine_is_clean(server)), "blocks or requests left behind"
        gc.collect()
        growth = rss_bytes() - rss_before
        assert growth < 50 * 2**20, f"the server grew by {growth / 2**20:.0f} MB"
        # the engine serves normally afterwards
        again = stream(server.port, completion(prompts[0], 16))
        assert again["text"] == tok.decode(solo(prompts[0], 16))
    finally:
        server.stop()

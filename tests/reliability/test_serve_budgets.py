"""Issue 18, point 4: `aiayn serve` has budgets.

A request whose client goes away is abandoned within one decoding step; each request has a deadline (queueing
included); the work one request may ask for is bounded by its product; idle and slow connections are closed; a
small queue absorbs bursts; malformed, mistyped or wrongly typed requests get 400 / 415 / 422 with one error
shape. Real uvicorn servers on 127.0.0.1 (free ports, in threads) where the behaviour is the connection's; every
wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from starlette.testclient import TestClient

import aiayn
from aiayn.decoding import Cancelled
from aiayn.serve import Settings, create_app
from aiayn.serve.server import server_config

STEP = 0.02  # seconds per fake decoding step


@pytest.fixture(scope="module")
def models(model_folders):
    return aiayn.load(model_folders / "s2s", device="cpu"), aiayn.load(model_folders / "lm", device="cpu")


def client(model, **settings):
    app = create_app(model, Settings(**settings))
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


class Stepping:
    """A stand-in for Translator.translate: "slow" decodes for up to `seconds` in steps of STEP, checking
    should_stop at each step as the real decoder does; anything else answers at once."""

    def __init__(self, seconds: float = 15.0) -> None:
        self.seconds, self.entered, self.stopped = seconds, threading.Event(), threading.Event()
        self.stopped_at: float | None = None

    def __call__(self, texts, decode=None, should_stop=None, **kwargs):
        if texts != ["slow"]:
            return ["fast"] * len(texts)
        self.entered.set()
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            if should_stop is not None and should_stop():
                self.stopped_at = time.monotonic()
                self.stopped.set()
                raise Cancelled
            time.sleep(STEP)
        return ["done"]


class Server:
    """uvicorn with the app of `aiayn serve`, as `aiayn.serve.serve` configures it, on a free loopback port."""

    def __init__(self, model, **settings) -> None:
        import uvicorn

        settings.setdefault("idle_timeout", 5.0)
        self.settings = Settings(**settings)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = server_config(create_app(model, self.settings), "127.0.0.1", self.port, self.settings.idle_timeout,
                               log_level="warning")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def post(self, path: str, body: dict, timeout: float = 10) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


def request_bytes(body: dict, path: str = "/v1/translate") -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    return head.encode() + b"\r\n\r\n" + data


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock` (read returns b"" or the connection is reset), None if not."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def test_a_client_that_goes_away_is_abandoned_within_a_step_and_frees_its_slot(models, monkeypatch):
    s2s, _ = models
    fake = Stepping()
    monkeypatch.setattr(s2s, "translate", fake)
    with Server(s2s, max_in_flight=1, queue=0) as server:
        sock = server.connect()
        sock.sendall(request_bytes({"text": "slow"}))
        assert fake.entered.wait(10)
        gone_at = time.monotonic()
        sock.close()  # the client leaves while its request decodes
        assert fake.stopped.wait(5), "the request kept decoding after its client left"
        assert fake.stopped_at - gone_at < 1.0  # within a step or so (plus the event loop's turn)
        status, body = server.post("/v1/translate", {"text": "next"})
        assert status == 200 and body == {"translations": ["fast"]}  # the only slot is free again


def test_the_real_decoder_checks_the_budget_at_each_step(models):
    s2s, _ = models
    with Server(s2s, request_timeout=1e-6) as server:  # the first step already sees an expired budget
        status, body = server.post("/v1/translate", {"text": "two dogs", "beam": 2})
        assert status == 503 and body["error"].startswith("timed out")
    with Server(s2s) as server:
        status, body = server.post("/v1/translate", {"text": "two dogs", "beam": 2})
        assert status == 200 and body == {"translations": s2s.translate(["two dogs"], beam=2)}


def test_each_request_has_a_deadline_queueing_included(models, monkeypatch):
    s2s, _ = models
    fake, held = Stepping(), threading.Event()

    def translate(texts, **kwargs):
        if texts == ["hold"]:  # holds the only slot for 2.5 s whatever its budget says
            held.set()
            time.sleep(2.5)
            return ["held"]
        return fake(texts, **kwargs)

    monkeypatch.setattr(s2s, "translate", translate)
    api = client(s2s, max_in_flight=1, queue=1, request_timeout=1.0)
    start = time.monotonic()
    r = api.post("/v1/translate", json={"text": "slow"})  # would decode for 15 s
    assert r.status_code == 503 and set(r.json()) == {"error"} and "timed out" in r.json()["error"], r.text
    assert r.headers["retry-after"] == "1" and time.monotonic() - start < 3.0 and fake.stopped.is_set()
    results = {}
    holder = threading.Thread(target=lambda: results.update(hold=api.post("/v1/translate", json={"text": "hold"})))
    holder.start()
    assert held.wait(10)
    start = time.monotonic()
    r = api.post("/v1/translate", json={"text": "queued"})  # waits for the slot, and its deadline runs meanwhile
    took = time.monotonic() - start
    assert r.status_code == 503 and "timed out" in r.json()["error"] and took < 2.0, (r.text, took)
    holder.join(10)
    assert results["hold"].json() == {"translations": ["held"]}
    assert api.post("/v1/translate", json={"text": "after"}).json() == {"translations": ["fast"]}  # slot freed


def test_the_work_of_one_request_is_bounded_by_its_product(models):
    s2s, _ = models
    api = client(s2s)
    r = api.post("/v1/translate", json={"text": ["a " * 1000] * 12, "beam": 16})  # each field within its bound
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"].startswith("invalid request") and {f["field"] for f in body["fields"]} >= {"text", "beam"}
    assert "over the server's limit of 16,384" in body["fields"][0]["message"]
    assert api.post("/v1/translate", json={"text": ["a " * 1000] * 12, "beam": 1}).status_code == 200
    tight = client(s2s, max_work=50)
    r = tight.post("/v1/translate", json={"text": "two dogs play", "beam": 4})
    assert r.status_code == 422 and "limit of 50" in r.json()["fields"][0]["message"]
    r = api.post("/v1/attention", json={"text": "a" * 1000})
    assert r.status_code == 422
    assert any(f["field"] == "text" and "at most 300 characters" in f["message"] for f in r.json()["fields"])
    assert api.post("/v1/attention", json={"text": "two dogs " * 33}).status_code == 200


def _slow_connections(server) -> list[socket.socket]:
    silent = server.connect()  # connects and sends nothing
    trickle = server.connect()  # sends its headers a byte at a time
    body_less = server.connect()  # whole headers, then none of the body it announced
    body_less.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{")  # fmt: skip
    idle = server.connect()  # a keep-alive connection after its answer
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert b"200 OK" in idle.recv(65536)

    def drip() -> None:
        for byte in b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40:
            try:
                trickle.send(bytes([byte]))
            except OSError:
                return  # closed by the server
            time.sleep(0.1)

    threading.Thread(target=drip, daemon=True).start()
    return [silent, trickle, body_less, idle]


def test_idle_and_slow_connections_are_closed_after_the_idle_timeout(models):
    s2s, _ = models
    with Server(s2s, idle_timeout=1.0) as server:
        sockets = _slow_connections(server)
        try:
            for name, sock in zip(("silent", "trickle", "body-less", "idle"), sockets, strict=True):
                took = closed_within(sock, 4.0)
                assert took is not None, f"the {name} connection was never closed"
            status, _ = server.post("/v1/translate", {"text": "two dogs"})  # a client that sends at once is fine
            assert status == 200
        finally:
            for sock in sockets:
                sock.close()


def test_a_queue_absorbs_bursts_and_beyond_it_503_comes_at_once(models, monkeypatch):
    s2s, _ = models
    release = threading.Event()
    entered = threading.Semaphore(0)

    def blocking(texts, should_stop=None, **kwargs):
        entered.release()
        while not release.is_set():
            if should_stop():
                raise Cancelled
            time.sleep(STEP)
        return ["done"] * len(texts)

    monkeypatch.setattr(s2s, "translate", blocking)
    api = client(s2s, max_in_flight=1, queue=2)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(api.post("/v1/translate", json={"text": "a"})
                                                              .status_code)) for _ in range(3)]  # fmt: skip
    threads[0].start()
    assert entered.acquire(timeout=10)
    for t in threads[1:]:
        t.start()
    time.sleep(0.5)  # both wait in the queue
    start = time.monotonic()
    r = api.post("/v1/translate", json={"text": "b"})
    assert time.monotonic() - start < 2.0
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "1 requests in flight and 2 waiting" in r.text
    release.set()
    for t in threads:
        t.join(10)
    assert results == [200, 200, 200]  # the queued ones ran once the slot was free


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/v1/translate", {"text": "a", "beam": "4"}, 422, "valid integer"),
        ("/v1/translate", {"text": "a", "beam": 4.0}, 422, "valid integer"),
        ("/v1/translate", {"text": "a", "beam": True}, 422, "valid integer"),
        ("/v1/translate", {"text": 5}, 422, "valid string"),
        ("/v1/translate", {"text": "a", "alpha": "0.6"}, 422, "valid number"),
        ("/v1/generate", {"prompt": "a", "max_new_tokens": "10"}, 422, "valid integer"),
        ("/v1/generate", {"prompt": "a", "seed": 1.5}, 422, "valid integer"),
    ],
)
def test_values_of_the_wrong_type_are_refused_not_coerced(models, path, body, status, words):
    model = models[1] if path == "/v1/generate" else models[0]
    r = client(model).post(path, json=body)
    assert r.status_code == status and set(r.json()) == {"error", "fields"}
    assert any(words in f["message"] for f in r.json()["fields"]), r.json()


def test_malformed_json_wrong_content_type_and_one_error_shape(models):
    s2s, lm = models
    api = client(s2s)
    r = api.post("/v1/translate", content=b'{"text": "a",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON") and set(r.json()) == {"error"}
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        r = api.post("/v1/translate", content=b'{"text": "a"}', headers=headers)
        assert r.status_code == 415 and "application/json" in r.json()["error"], (content_type, r.text)
    r = api.post("/v1/translate", content=b'{"text": "a"}', headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    assert api.post("/v1/translate", json={"text": "a", "alpha": 1}).status_code == 200  # an integer is a number
    evil = TestClient(create_app(s2s), base_url="http://attacker.example")
    for r, status in [(api.get("/nowhere"), 404), (api.get("/v1/translate"), 405), (evil.get("/health"), 400)]:
        assert r.status_code == status and set(r.json()) == {"error"} and isinstance(r.json()["error"], str), r.text


@pytest.mark.parametrize("temperature", [2e-38, 1e-40, 1e-300, 5e-324])
def test_a_temperature_whose_scaled_logits_overflow_is_answered(models, temperature):
    _, lm = models
    r = client(lm).post("/v1/generate", json={"prompt": "zwei", "max_new_tokens": 8, "temperature": temperature})
    assert r.status_code == 200, r.text
    assert r.json() == {"text": lm.generate("zwei", max_new_tokens=8, temperature=0.0)}  # as good as greedy


def test_serve_flags_reach_the_settings_and_are_checked(model_folders, capsys, monkeypatch):
    import aiayn.serve
    from aiayn.cli import main

    folder = str(model_folders / "s2s")
    for flags, message in [
        (["--request-timeout", "0"], "--request-timeout 0: expected a number of seconds > 0"),
        (["--idle-timeout", "nan"], "--idle-timeout nan: expected a number of seconds > 0"),
        (["--queue", "-1"], "--queue -1: expected a number >= 0"),
        (["--max-work", "0"], "--max-work 0: expected a number >= 1"),
    ]:
        assert main(["serve", "--model", folder, *flags]) == 2
        assert capsys.readouterr().err.strip() == f"error: {message}"
    seen = {}
    monkeypatch.setattr(aiayn.serve, "serve", lambda model, host, port, settings: seen.update(settings=settings))
    flags = ["--request-timeout", "7.5", "--idle-timeout", "3", "--queue", "5", "--max-work", "100"]
    assert main(["serve", "--model", folder, "--max-in-flight", "2", *flags]) == 0
    s = seen["settings"]
    assert (s.request_timeout, s.idle_timeout, s.queue, s.waiting, s.max_work) == (7.5, 3.0, 5, 5, 100)
    assert main(["serve", "--model", folder, "--max-in-flight", "3"]) == 0
    s = seen["settings"]
    assert (s.request_timeout, s.idle_timeout, s.waiting, s.max_work) == (30.0, 10.0, 6, 16384)

"""The server's budgets at the ASGI level, in front of the app.

`Guard` checks the Host header (400), the body size (413) and, for POST /v1/..., the Content-Type (415); it gives
each request a `Budget` (its deadline starts when the request arrives, so queueing counts) and watches the
connection: when the client goes away the budget is marked, and decoding, which checks `Budget.should_stop` once
per step, stops. `Slots` lets `max_in_flight` requests run and a few more wait, first come first served.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from typing import Any

SCOPE_KEY = "aiayn.budget"
JSON_TYPES = (b"application/json",)


class Budget:
    """One request's budget: a deadline, and whether its client went away (set from the event loop, read from
    the worker thread that decodes)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.gone = threading.Event()

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def should_stop(self) -> bool:
        return self.gone.is_set() or self.expired()


def budget_of(scope) -> Budget:
    return scope.get(SCOPE_KEY) or Budget(float("inf"))


class Full(Exception):
    """Every slot is taken and the queue is full."""


class Stopped(Exception):
    """The request's deadline passed, or its client went away, while it waited."""


class _Waiter:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.future, self.granted = loop, loop.create_future(), False


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Slots:
    """At most `running` requests run at once and at most `waiting` more wait (first come, first served); the
    rest are refused at once (Full). Thread-safe and usable from several event loops at once (a TestClient runs
    each request on its own loop)."""

    def __init__(self, running: int, waiting: int) -> None:
        self._lock = threading.Lock()
        self._free, self._waiting = running, waiting
        self._queue: deque[_Waiter] = deque()

    async def acquire(self, budget: Budget) -> None:
        with self._lock:
            if self._free > 0 and not self._queue:
                self._free -= 1
                return
            if len(self._queue) >= self._waiting:
                raise Full
            waiter = _Waiter(asyncio.get_running_loop())
            self._queue.append(waiter)
        granted = False
        try:
            while not budget.should_stop():
                done, _ = await asyncio.wait({waiter.future}, timeout=0.05)
                if done:
                    granted = True
                    return
        finally:
            if not granted:  # stopped, or the task was cancelled: leave the queue, or pass on a slot given late
                with self._lock:
                    late = waiter.granted
                    if not late:
                        self._queue.remove(waiter)
                if late:
                    self.release()
        raise Stopped

    def release(self) -> None:
        with self._lock:
            if not self._queue:
                self._free += 1
                return
            waiter = self._queue.popleft()
            waiter.granted = True
        waiter.loop.call_soon_threadsafe(_wake, waiter.future)


def host_allowed(host: str, allowed: list[str]) -> bool:
    """The Host header (port removed; [IPv6] kept in brackets) against the allow-list; "*.example.org" matches
    subdomains, "*" anything."""
    name = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.split(":")[0]
    name = name.lower()
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class Guard:
    """ASGI middleware: Host allow-list, body limit, JSON only, and each request's Budget (see the module)."""

    def __init__(self, app, settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        budget = Budget(self.settings.request_timeout)
        refused = self._refusal(scope)
        if refused is not None:
            return await send_json(send, *refused)
        limit = self.settings.max_body
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await send_json(send, 413, {"error": f"request body over {limit:,} bytes"})
        scope[SCOPE_KEY] = budget
        watcher = asyncio.ensure_future(_watch(receive, budget))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await asyncio.shield(watcher)  # the http.disconnect the watcher saw

        try:
            return await self.app(scope, replay, send)
        finally:
            watcher.cancel()

    def _refusal(self, scope) -> tuple[int, dict[str, Any]] | None:
        headers = dict(scope.get("headers") or [])
        if not host_allowed(headers.get(b"host", b"").decode("latin-1"), self.settings.allowed_hosts):
            return 400, {"error": "Host header not allowed"}
        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            return 400, {"error": "Content-Length is not a number"}
        if declared is not None and int(declared) > self.settings.max_body:
            return 413, {"error": f"request body over {self.settings.max_body:,} bytes"}
        if scope.get("method") == "POST" and scope.get("path", "").startswith("/v1/"):
            media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media not in JSON_TYPES:
                shown = media.decode("latin-1")[:100] or "none"
                return 415, {"error": f"Content-Type {shown}: send application/json"}
        return None


async def _watch(receive, budget: Budget) -> dict[str, Any]:
    """Read the connection until the client goes away (or the response is done: then the task is cancelled)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            budget.gone.set()
            return message
        await asyncio.sleep(0.05)  # an unexpected message: never spin


async def send_json(send, status: int, payload: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(payload).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})

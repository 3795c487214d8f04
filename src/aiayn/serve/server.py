"""uvicorn with an idle timeout on reading requests.

uvicorn's `timeout_keep_alive` only starts once a response is complete, and any byte received cancels it: a
client that connects and sends nothing, or sends its headers a byte a second, holds its connection for ever.
`TimedH11Protocol` gives each request `idle_timeout` seconds from the moment the connection is free to take it
(opened, or the previous response sent) until it has arrived whole (headers and body); then the request's own
deadline (`--request-timeout`) takes over. A connection that misses it is closed.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class TimedH11Protocol(H11Protocol):
    idle_timeout: float = 10.0  # set by `protocol_class`

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.idle_timeout, self._expire)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.DONE:  # the request arrived whole: the app's budget applies now
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets idle_timeout to arrive

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _expire(self) -> None:
        self._read_timer = None
        if self.conn.their_state is h11.DONE or self.transport.is_closing():
            return
        self.logger.info("closing a connection idle for %s s", self.idle_timeout)
        self.transport.close()


def protocol_class(idle_timeout: float) -> type[TimedH11Protocol]:
    return type("TimedH11Protocol", (TimedH11Protocol,), {"idle_timeout": float(idle_timeout)})


def server_config(app, host: str, port: int, idle_timeout: float, **options):
    """The uvicorn.Config `aiayn serve` runs (tests start a uvicorn.Server on it in a thread)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=protocol_class(idle_timeout), server_header=False,
                          timeout_keep_alive=idle_timeout, **options)  # fmt: skip

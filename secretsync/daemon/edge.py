"""The daemon's HTTP edge: how long a client may hold a connection, and how much of the log a
misbehaving client may take.

aiohttp's server times neither the reading of a request head nor, until its keep-alive timeout
(3,630 s by default), a silent connection: 200 connections that trickle one header line every
half second all stayed open for the 30 s measured. Here:

- `ConnectionGuard` wraps aiohttp's protocol of each connection. From the connection's opening,
  and from the first byte after a response, the request line and headers must arrive within
  `header_timeout_s`; between requests a connection may stay silent `idle_timeout_s`. A
  deadline passed aborts the connection (a client that does not read gets nothing more
  written). `track_requests`, a middleware, tells the guard where a request head ends and
  where its handling ends.
- `Throttle`: at most one log line per source address and window (a minute), each line with
  the count of events since the address's previous line: refused webhooks, dropped
  connections and malformed requests cost one line a minute per address, however many.
- `ProtocolErrors`: aiohttp logs a malformed request (garbage bytes, a bad header line) at
  ERROR with its parser's traceback and the offending bytes; this filter replaces that record
  with one throttled line that names the address and the error class only.
- `serve`: the listening socket with all of the above, for the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

log = logging.getLogger(__name__)
SERVER_LOG: Final = logging.getLogger("secretsync.daemon.edge.server")  # aiohttp's server records

HEADER_TIMEOUT_S: Final = 10.0
IDLE_TIMEOUT_S: Final = 60.0
WINDOW_S: Final = 60.0
MAX_ADDRESSES: Final = 4096  # tracked per throttle; past it, the rest share one line
OTHERS: Final = "(other addresses)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    header_timeout_s: float = HEADER_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S


class Throttle:
    """Counts events per key; says when a line may be logged and how many events it stands
    for. Memory is bounded: at most `max_keys` keys, the oldest forgotten once their window
    has passed, the excess counted under one shared key."""

    def __init__(
        self,
        *,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_ADDRESSES,
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()  # oldest line first

    def hit(self, key: str) -> int | None:
        """Count one event for `key`: the number of events to report now (this one and those
        held back since the key's previous line), or None to stay quiet."""
        now = self._clock()
        if key not in self._keys:
            self._forget(now)
            if len(self._keys) >= self._max_keys:
                key = OTHERS
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.window_s:
            self._keys[key] = (entry[0], entry[1] + 1)
            return None
        self._keys[key] = (now, 0)
        self._keys.move_to_end(key)
        return 1 + (entry[1] if entry is not None else 0)

    def _forget(self, now: float) -> None:
        while self._keys:
            key, (logged_at, _held) = next(iter(self._keys.items()))
            if now - logged_at < self.window_s:
                return
            del self._keys[key]  # held-back events of a quiet key go uncounted in the log


def peer(transport: asyncio.BaseTransport | None) -> str:
    name = transport.get_extra_info("peername") if transport is not None else None
    return str(name[0]) if isinstance(name, tuple) and name else "unknown"


class ConnectionGuard(asyncio.Protocol):
    """aiohttp's protocol for one connection, with a deadline on each request head and on
    silence between requests. States: head (reading a request line and headers, deadline
    `header_timeout_s`), busy (a handler runs, no deadline here: a handler that reads a body
    bounds that itself) and idle (after a handler, deadline `idle_timeout_s`)."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        *,
        limits: Limits,
        on_drop: Callable[[str, str], None],
    ) -> None:
        self._inner = inner
        self._limits = limits
        self._on_drop = on_drop
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = "head"

    # what the transport calls, forwarded to aiohttp
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # create_server makes stream ones
            raise TypeError(f"not a stream transport: {type(transport).__name__}")
        self._transport = transport
        self._arm(self._limits.header_timeout_s, "no complete request head")
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._state == "idle":  # the first byte of the next request starts its head clock
            self._state = "head"
            self._arm(self._limits.header_timeout_s, "no complete request head")
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # what `track_requests` calls
    def request_started(self) -> None:
        self._state = "busy"
        self._disarm()

    def request_done(self) -> None:
        self._state = "idle"
        self._arm(self._limits.idle_timeout_s, "idle")

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._expire, reason, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str, seconds: float) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._on_drop(peer(transport), f"{reason} within {seconds:g} s")
        transport.abort()


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Middleware: marks the head of a request read, then its handling done, on the guard."""
    transport = request.transport
    guard = transport.get_protocol() if transport is not None else None
    if not isinstance(guard, ConnectionGuard):  # aiohttp's test server: no guard
        return await handler(request)
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.request_done()


class ProtocolErrors(logging.Filter):
    """On aiohttp's server logger: a record about an unparsable request becomes one throttled
    line without the traceback or the client's bytes; every other record passes unchanged."""

    def __init__(self, throttle: Throttle) -> None:
        super().__init__()
        self._throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        # aiohttp's message is "Error handling request from %s" with the peer address
        args = record.args if isinstance(record.args, tuple) else ()
        address = str(args[0]) if args and args[0] is not None else "unknown"
        count = self._throttle.hit(f"malformed {address}")
        if count is not None:
            log.info(
                "malformed request from %s refused (%d %s) [%d from this address since its "
                "last line]",
                address,
                exc.code or 400,
                type(exc).__name__,
                count,
                extra={"source": address, "count": count},
            )
        return False


@contextlib.asynccontextmanager
async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: Limits,
    on_drop: Callable[[str], None] = lambda reason: None,
    throttle: Throttle | None = None,
) -> AsyncIterator[list[tuple[str, int]]]:
    """Listen on host:port with `app` behind the guards; yields the bound (host, port)s.
    `on_drop` is told the reason of each connection dropped for slowness (for metrics)."""
    throttle = throttle or Throttle()
    runner = web.AppRunner(
        app,
        access_log=None,
        logger=SERVER_LOG,
        # aiohttp's own keep-alive close matches ours (a graceful close when it comes first)
        keepalive_timeout=limits.idle_timeout_s,
        # a body left unread by a refusal (413, 408) is drained, so that the client reads the
        # answer, for at most the header timeout too (aiohttp's default: 10 s more per client)
        lingering_time=limits.header_timeout_s,
    )
    await runner.setup()
    quiet = ProtocolErrors(throttle)
    SERVER_LOG.addFilter(quiet)

    def dropped(address: str, reason: str) -> None:
        on_drop("idle" if reason.startswith("idle") else "header")
        count = throttle.hit(f"drop {address}")
        if count is not None:
            log.info(
                "slow client %s dropped: %s [%d from this address since its last line]",
                address,
                reason,
                count,
                extra={"source": address, "count": count},
            )

    handlers = runner.server
    if handlers is None:  # setup() sets it
        raise RuntimeError("aiohttp's runner has no server after setup")

    def factory() -> asyncio.Protocol:
        return ConnectionGuard(handlers(), limits=limits, on_drop=dropped)

    server: asyncio.Server | None = None
    try:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, host, port, reuse_address=True, backlog=128)
        yield [_address(sock.getsockname()) for sock in server.sockets]
    finally:
        if server is not None:
            server.close()
        await runner.cleanup()  # closes every open connection (aiohttp tracks each one)
        if server is not None:
            await server.wait_closed()
        SERVER_LOG.removeFilter(quiet)


def _address(name: Any) -> tuple[str, int]:
    return str(name[0]), int(name[1])

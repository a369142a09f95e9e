"""A loopback TCP fault proxy of our own, for the T and V rows of the fault matrix.

    with FaultProxy("127.0.0.1", upstream_port) as proxy:
        proxy.port                    # point the client at 127.0.0.1:proxy.port
        proxy.latency_s = 2.0         # delay every chunk the server sends back
        proxy.bandwidth_bps = 20_000  # cap both directions (bytes per second)
        proxy.hang = True             # new connections are accepted and never answered
        proxy.reset_after(10_000)     # once a connection has carried >= 10,000 client bytes,
                                      # swallow the server's next reply and reset the client
                                      # (an "unknown outcome": the request reached the server)

It works on raw bytes, so it sits in front of TLS servers too (a kube-apiserver): thresholds
count bytes on the wire. The proxy runs its own asyncio loop in a thread, so it serves sync
clients (the kubernetes client's urllib3) and async ones alike; `stop()` closes every
connection it opened and joins the thread. It binds 127.0.0.1 only and never touches a
process it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType

CHUNK = 64 * 1024
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Connection:
    """What one client connection carried (client→server is `up`)."""

    up: int = 0
    down: int = 0
    reset: bool = False


class FaultProxy:
    """TCP proxy 127.0.0.1:port → upstream with latency, bandwidth cap, hang and reset faults."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.latency_s = 0.0
        self.bandwidth_bps: float | None = None
        self.hang = False
        self._reset_threshold: int | None = None
        self._resets_left = 0
        self.connections: list[Connection] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    # --- control (any thread) -----------------------------------------------------------------

    def reset_after(self, up_bytes: int, *, times: int = 1) -> None:
        """Arm `times` resets: on a connection that has carried >= `up_bytes` client bytes, the
        server's next reply is dropped and the client sees a TCP reset."""
        with self._lock:
            self._reset_threshold = up_bytes
            self._resets_left = times

    @property
    def resets(self) -> int:
        return sum(1 for c in self.connections if c.reset)

    def _take_reset(self, conn: Connection) -> bool:
        with self._lock:
            if (
                self._reset_threshold is not None
                and self._resets_left > 0
                and conn.up >= self._reset_threshold
            ):
                self._resets_left -= 1
                return True
            return False

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError("fault proxy did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(STOP_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("fault proxy thread did not stop")
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _abort(writer)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the proxy ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        conn = Connection()
        self.connections.append(conn)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            if self.hang:
                await asyncio.Event().wait()  # accept and never answer, until stop()
            up_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(upstream_writer)
            pumps = [
                asyncio.ensure_future(self._pump(reader, upstream_writer, conn, upward=True)),
                asyncio.ensure_future(
                    self._pump(up_reader, writer, conn, upward=False, client=writer)
                ),
            ]
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    finished.result()
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    _abort(w)
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        conn: Connection,
        *,
        upward: bool,
        client: asyncio.StreamWriter | None = None,
    ) -> None:
        while True:
            chunk = await source.read(CHUNK)
            if not chunk:
                with contextlib.suppress(OSError):
                    sink.write_eof()
                return
            if upward:
                conn.up += len(chunk)
            else:
                if self._take_reset(conn):
                    conn.reset = True
                    assert client is not None
                    _abort(client, rst=True)
                    return
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                conn.down += len(chunk)
            sink.write(chunk)
            await sink.drain()
            if self.bandwidth_bps:
                await asyncio.sleep(len(chunk) / self.bandwidth_bps)


def _abort(writer: asyncio.StreamWriter, *, rst: bool = False) -> None:
    sock = writer.get_extra_info("socket")
    if rst and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

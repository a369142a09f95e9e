"""The daemon's HTTP edge (`secretsync.daemon.edge`) on a real socket on 127.0.0.1, with the daemon's
app: slow clients dropped within the header and idle timeouts while other clients are served,
a slow webhook body answered 408, refused webhooks and malformed requests logged at most once
a minute per source address with a count (the throttle's clock is injected), and no parser
traceback or client bytes in the log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from secretsync.daemon import edge
from secretsync.daemon.service import Daemon
from secretsync.daemon.web import make_app
from tests.e2e.test_web import FakeEngine, make_daemon, signed
from tests.support import canary, cli, fleets

MakeRepo = Callable[[dict[str, str | bytes]], Path]
HOST = "127.0.0.1"
SLOW_CLIENTS = 200


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Edge:
    port: int
    daemon: Daemon

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"


@pytest.fixture
def repo(fleet_repo: MakeRepo) -> Path:
    return fleets.write_fleet(fleet_repo)


@asynccontextmanager
async def edge_server(
    repo: Path,
    *,
    header_s: float,
    idle_s: float,
    refusals: edge.Throttle | None = None,
    throttle: edge.Throttle | None = None,
) -> AsyncIterator[Edge]:
    """The daemon's app behind `edge.serve`, as `Daemon.serve` runs it, on a free port."""
    daemon = make_daemon(repo, FakeEngine())
    app = make_app(daemon, read_timeout_s=header_s, refusals=refusals)
    limits = edge.Limits(header_timeout_s=header_s, idle_timeout_s=idle_s)
    async with edge.serve(
        app, host=HOST, port=0, limits=limits, on_drop=daemon.metrics.dropped, throttle=throttle
    ) as addresses:
        ((_, port),) = addresses
        yield Edge(port=port, daemon=daemon)


async def healthz(server: Edge) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.get(server.url("/healthz")) as resp:
        return resp.status, await resp.json()


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(daemon.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response with a Content-Length body (what the daemon's handlers send)."""
    head = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"Content-Length: (\d+)", head)
    assert found, head
    return head + await reader.readexactly(int(found.group(1)))


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed the connection (b"" when nothing)."""
    try:
        return await reader.read()
    except ConnectionError:
        return b""


# --- slow clients -------------------------------------------------------------------------------


async def test_slowloris_connections_are_dropped_and_others_are_served(repo: Path) -> None:
    """200 connections each trickle a header line every 0.1 s and never end their head: every
    one is closed after the header timeout (not before), with nothing written to it, while a
    normal client gets /healthz; the drops are counted and logged once for the address."""
    header_s = 0.5
    async with edge_server(repo, header_s=header_s, idle_s=30) as server:
        loop = asyncio.get_running_loop()

        async def slow_client() -> tuple[float, bytes]:
            # timed from before the connect: the server's clock starts at its accept, which comes
            # before open_connection returns here (by 0.3 s with 200 connects on a busy machine)
            opened = loop.time()
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n")
            closed = asyncio.ensure_future(closed_by_server(reader))
            while not closed.done():
                writer.write(b"X-Slow: 1\r\n")  # the pace of the attack, not a wait
                await asyncio.wait({closed}, timeout=0.1)
            lived = loop.time() - opened
            writer.close()
            return lived, closed.result()

        async with asyncio.timeout(60):  # bounded: every connection closed well before this
            attack = [asyncio.create_task(slow_client()) for _ in range(SLOW_CLIENTS)]
            assert await healthz(server) == (200, {"status": "ok"})
            results = await asyncio.gather(*attack)

        assert [data for _, data in results if data] == []  # never a response to a partial head
        lifetimes = sorted(lived for lived, _ in results)
        assert lifetimes[0] >= header_s * 0.8, lifetimes[:5]
        assert metric(server.daemon, "secretsync_http_dropped_total", reason="header") == float(
            SLOW_CLIENTS
        )
        # the server is still whole: a new client is served at once
        assert await healthz(server) == (200, {"status": "ok"})


async def test_slowloris_log_is_one_line_per_address_with_a_count(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    throttle = edge.Throttle(clock=clock)
    async with edge_server(repo, header_s=0.2, idle_s=30, throttle=throttle) as server:

        async def dropped_client() -> bytes:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(b"GET / HTTP/1.1\r\n")
            data = await closed_by_server(reader)
            writer.close()
            return data

        async with asyncio.timeout(30):
            assert await asyncio.gather(*(dropped_client() for _ in range(20))) == [b""] * 20
            clock.now += 60
            assert await dropped_client() == b""
    lines = [r.getMessage() for r in caplog.records if "slow client" in r.getMessage()]
    assert lines == [
        f"slow client {HOST} dropped: no complete request head within 0.2 s "
        "[1 from this address since its last line]",
        f"slow client {HOST} dropped: no complete request head within 0.2 s "
        "[20 from this address since its last line]",
    ]


async def test_idle_keepalive_connection_is_closed_after_the_idle_timeout(repo: Path) -> None:
    async with edge_server(repo, header_s=5, idle_s=0.5) as server:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(HOST, server.port)
        for _ in range(2):  # keep-alive works within the timeouts
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
            assert (await read_response(reader)).startswith(b"HTTP/1.1 200 OK")
        silent_since = loop.time()
        async with asyncio.timeout(20):
            assert await closed_by_server(reader) == b""
        assert loop.time() - silent_since >= 0.4
        writer.close()


async def test_next_request_head_has_its_own_deadline(repo: Path) -> None:
    """After a response, the first byte of the next request starts the header clock: a client
    cannot keep a connection by starting a request and never finishing it (idle is 30 s)."""
    async with edge_server(repo, header_s=0.5, idle_s=30) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200 OK")
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        async with asyncio.timeout(10):
            assert await closed_by_server(reader) == b""
        writer.close()
        assert metric(server.daemon, "secretsync_http_dropped_total", reason="header") == 1.0


async def test_slow_webhook_body_is_408_and_the_connection_closed(repo: Path) -> None:
    body = json.dumps({"paths": ["secret/web/prod"]}).encode()
    async with edge_server(repo, header_s=0.5, idle_s=30) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        headers = "".join(f"{k}: {v}\r\n" for k, v in signed(body).items())
        writer.write(
            f"POST /v1/webhooks/vault HTTP/1.1\r\nHost: edge\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n".encode()
            + body[:5]
        )
        async with asyncio.timeout(20):
            answer = await closed_by_server(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert b"body not received within 0.5 s" in answer
        assert metric(server.daemon, "secretsync_webhooks_total", outcome="timeout") == 1.0
        assert server.daemon._pending == set()


async def test_serve_flags_bound_slow_clients_in_a_real_process(repo: Path, tmp_path: Path) -> None:
    """`secretsync serve --header-timeout 0.5 --idle-timeout 1` as a user runs it: 20 slow
    clients are dropped, /healthz answers, the metrics count the drops, SIGTERM exits 0."""
    log = tmp_path / "serve.log"
    # no Vault: cycles fail, the server serves
    env = cli.bare_env(tmp_path, SECRETSYNC_HMAC_KEY=canary.new("hmac"), VAULT_ADDR=cli.NO_VAULT)
    proc = cli.serve(
        repo, "--listen", f"{HOST}:0", "--no-kube", "--header-timeout", "0.5",
        "--idle-timeout", "1", env=env, log=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(rf"listening on http://{HOST}:(\d+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)  # poll interval under the deadline above
        port = int(found.group(1))

        async def slow_client() -> bytes:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Slow: 1\r\n")
            data = await closed_by_server(reader)
            writer.close()
            return data

        started = time.monotonic()
        async with asyncio.timeout(60):
            attack = [asyncio.create_task(slow_client()) for _ in range(20)]
            status = await asyncio.to_thread(_get, f"http://{HOST}:{port}/healthz")
            assert status[0] == 200
            assert await asyncio.gather(*attack) == [b""] * 20
        # the flag is what bounds them: the default (10 s) would hold them all much longer
        assert time.monotonic() - started < 8
        metrics = (await asyncio.to_thread(_get, f"http://{HOST}:{port}/metrics"))[1]
        assert 'secretsync_http_dropped_total{reason="header"} 20.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        cli.stop(proc)
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("slow client") == 1, text  # 20 drops, one line with its count


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - 127.0.0.1 only
        return resp.status, canary.keep(url, resp.read().decode())


# --- the log ------------------------------------------------------------------------------------


async def test_bad_signatures_are_logged_once_a_minute_per_address_with_a_count(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two source addresses send 30 bad-signature webhooks in each of three minutes (clock
    injected): each address gets one line a minute, each line the count since its previous
    one, and the metrics count every refusal."""
    clock = FakeClock()
    refusals = edge.Throttle(clock=clock)
    body = b'{"paths": ["secret/web/prod"]}'
    sources = ("127.0.0.1", "127.0.0.2")
    async with edge_server(repo, header_s=5, idle_s=30, refusals=refusals) as server:
        sessions = {
            source: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
            )
            for source in sources
        }
        try:
            for minute in range(3):
                start = 1000.0 + 60 * minute
                for i in range(30):
                    clock.now = start + i  # 30 within this minute
                    for session in sessions.values():
                        async with session.post(
                            server.url("/v1/webhooks/vault"),
                            data=body,
                            headers=signed(body, key=b"not-the-key"),
                        ) as resp:
                            assert resp.status == 401
            clock.now = 1000.0 + 180  # one more each: its line reports the minute held back
            for session in sessions.values():
                async with session.post(server.url("/v1/webhooks/vault"), data=body) as resp:
                    assert resp.status == 401
        finally:
            for session in sessions.values():
                await session.close()
        refused = metric(server.daemon, "secretsync_webhooks_total", outcome="unauthorized")
    assert refused == 2 * (3 * 30 + 1)
    records = [r for r in caplog.records if r.getMessage().startswith("webhook refused")]
    for source in sources:
        mine = [r for r in records if getattr(r, "source", None) == source]
        counts = [getattr(r, "count", None) for r in mine]
        assert counts == [1, 30, 30, 30], [r.getMessage() for r in mine]
        assert all(f"from {source}: " in r.getMessage() for r in mine)
        assert "[30 from this address since its last line]" in mine[1].getMessage()
    assert len(records) == 2 * 4  # 182 refusals, 8 lines


async def test_malformed_requests_leave_no_traceback_and_no_client_bytes(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage bytes, a bad header line and an oversized header are answered 400 by aiohttp;
    the log gets one line for the address (throttled) naming the error class, no traceback
    and none of the request's bytes (here a canary in the bad header line)."""
    marker = canary.new("malformed")
    payloads = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",  # a TLS hello
        f"GET / HTTP/1.1\r\nHost: edge\r\nBad Header {marker}\r\n\r\n".encode(),
        b"GET / HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    ]
    async with edge_server(repo, header_s=5, idle_s=30) as server:
        for payload in payloads * 3:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(payload)
            async with asyncio.timeout(10):
                answer = await closed_by_server(reader)
            writer.close()
            assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400", b"HTTP/1.1 431")), answer
        assert await healthz(server) == (200, {"status": "ok"})
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]
    assert "Traceback" not in caplog.text
    assert marker not in caplog.text
    lines = [r.getMessage() for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(lines) == 1, lines  # nine malformed requests within the minute
    assert re.fullmatch(
        rf"malformed request from {HOST} refused \(400 \w+\) "
        r"\[1 from this address since its last line\]",
        lines[0],
    )


def test_handler_errors_still_carry_their_traceback() -> None:
    """Only unparsable requests are quieted: another record of aiohttp's server logger (an
    exception in a handler) passes the filter with its traceback."""
    quiet = edge.ProtocolErrors(edge.Throttle())
    try:
        raise RuntimeError("handler bug")
    except RuntimeError as exc:
        record = logging.LogRecord(
            "secretsync.daemon.edge.server", logging.ERROR, __file__, 1, "Error handling request",
            None, (type(exc), exc, exc.__traceback__),
        )  # fmt: skip
    assert quiet.filter(record) is True
    assert record.exc_info is not None


def test_throttle_memory_is_bounded() -> None:
    clock = FakeClock()
    throttle = edge.Throttle(clock=clock, max_keys=2)
    assert [throttle.hit(k) for k in ("a", "b", "c", "d")] == [1, 1, 1, None]
    assert throttle.hit("a") is None  # still within a's minute
    clock.now += 60
    assert throttle.hit("e") == 1  # a, b and the shared key are forgotten once quiet
    assert throttle.hit("a") == 1
    assert throttle.hit("f") == 1  # over the bound again: the shared key, new this minute
    assert throttle.hit("g") is None

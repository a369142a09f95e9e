"""The daemon's HTTP surface through aiohttp's test client, against the real Daemon with an
engine of our own (FakeEngine) or the real engine with a fake source and the Git sink."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from secretsync.core import errors
from secretsync.core.model import DesiredSecret, Fleet
from secretsync.daemon import webhook
from secretsync.daemon.fleetpage import render_page
from secretsync.daemon.service import Daemon
from secretsync.daemon.settings import DaemonSettings
from secretsync.daemon.status import StatusBoard
from secretsync.daemon.web import make_app
from secretsync.daemon.wiring import CountingSource
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport, ItemResult
from secretsync.fleet import load, plan
from secretsync.fleet.certificates import FleetCertificates
from secretsync.sinks.git.sink import GitSink
from tests.support import canary, fleets
from tests.support.fakes import FakeSource

MakeRepo = Callable[[dict[str, str | bytes]], Path]
AiohttpClient = Callable[..., Any]
KEY = b"web-test-webhook-key"
HMAC = b"web-test-hmac-key-0123456789abcd"


class FakeEngine:
    """Answers every planned object with `action` (or raises), and records each call."""

    def __init__(self) -> None:
        self.calls: list[Collection[str] | None] = []
        self.called = asyncio.Event()
        self.action = "create"
        self.explode = False
        self.content_hash = "hash-1"  # of every object it reports delivered

    def answers(self, desired: DesiredSecret) -> bool:
        """Whether this engine reports `desired` (a subclass may answer for some only)."""
        return True

    async def run_cycle(
        self,
        fleet: Fleet,
        *,
        clusters: Collection[str] = (),
        only_paths: Collection[str] | None = None,
        planned: Sequence[DesiredSecret] | None = None,
        certificates: FleetCertificates | None = None,
    ) -> CycleReport:
        self.calls.append(only_paths)
        self.called.set()
        if self.explode:
            raise RuntimeError("boom")
        report = CycleReport()
        for d in plan.plan(fleet) if planned is None else planned:
            if not self.answers(d):
                continue
            report.items.append(
                ItemResult(
                    cluster=d.cluster.name,
                    namespace=d.target.namespace,
                    name=d.target.name,
                    fleet_secret=d.fleet_secret,
                    sink="git",
                    action=self.action,
                    reason="source down" if self.action == "failed" else "",
                    content_hash=None if self.action == "failed" else self.content_hash,
                    desired=d,
                )
            )
        return report

    async def wait_calls(self, n: int, *, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < n:
                self.called.clear()
                await self.called.wait()


class FakeWiring:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.closed = False

    async def engine_for(self, fleet: Fleet) -> Any:
        return self.engine

    def delivers(self, cluster: Any) -> bool:
        return True

    async def aclose(self) -> None:
        self.closed = True


def make_daemon(root: Path, engine: Any, *, key: bytes | None = KEY, **kw: Any) -> Daemon:
    settings = DaemonSettings(
        fleet_path=root, hmac_key=HMAC, interval_s=3600, webhook_key=key, **kw
    )
    return Daemon(settings=settings, wiring=FakeWiring(engine))


async def started(repo: Path, aiohttp_client: AiohttpClient, engine: Any) -> Any:
    """The daemon of `repo` on `engine`, its app behind aiohttp's test client, after its start
    cycle: (daemon, client)."""
    daemon = make_daemon(repo, engine)
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    await daemon.cycle(trigger="start")
    return daemon, client


def signed(
    body: bytes, *, msg_id: str = "", ts: int | None = None, key: bytes = KEY
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time()) if ts is None else ts
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": webhook.sign(key, msg_id, stamp, body),
        "Content-Type": "application/json",
    }


@pytest.fixture
def repo(fleet_repo: MakeRepo) -> Path:
    return fleets.write_fleet(fleet_repo)


async def test_health_and_readiness_follow_the_fleet(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    daemon = make_daemon(repo, FakeEngine())
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["fleet"] == "not loaded"
    await daemon.cycle(trigger="start")
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["checks"] == {"fleet": "loaded"}


async def test_unreachable_source_makes_readiness_say_which(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    daemon = make_daemon(repo, FakeEngine())
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    await daemon.cycle(trigger="start")
    inner = FakeSource({"ok/path": {"k": "v"}})
    inner.failing["down/path"] = errors.SourceUnavailable("vault:secret/down/path: unavailable")
    wrapped = CountingSource(inner, name="vault", report=daemon._read)
    with pytest.raises(errors.SourceUnavailable):
        await wrapped.fetch(_loc("down/path"))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["source:vault"].startswith("unreachable: vault:secret")
    await wrapped.fetch(_loc("ok/path"))
    assert (await client.get("/readyz")).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'secretsync_source_reads_total{outcome="error",source="vault"} 1.0' in metrics
    assert 'secretsync_source_reads_total{outcome="ok",source="vault"} 1.0' in metrics


def _loc(path: str) -> Any:
    from secretsync.core.model import Location

    return Location("vault", path, mount="secret")


async def test_status_page_and_metrics_after_a_cycle(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    daemon = make_daemon(repo, FakeEngine())
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    await daemon.cycle(trigger="start")
    doc = await (await client.get("/v1/status")).json()
    assert doc["fleet"]["name"] == "acme"
    assert doc["cycles"] == 1 and doc["lastCycle"]["outcome"] == "ok"
    assert {o["state"] for o in doc["objects"]} == {"synced"}
    assert len(doc["objects"]) == 8
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    assert page.count('data-state="synced"') == 8
    assert 'data-labels="env=prod region=us-east-1 tier=restricted"' in page
    assert '<option value="env=prod">' in page
    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {
        "secretsync_cycles",
        "secretsync_cycle_duration_seconds",
        "secretsync_objects",
        "secretsync_webhooks",
    } <= set(families)
    synced = {
        s.labels["cluster"]: s.value
        for s in families["secretsync_objects"].samples
        if s.labels["state"] == "synced"
    }
    assert synced["prod-use1"] == 2 and synced["dev-use1"] == 1


async def test_page_escapes_everything(repo: Path, aiohttp_client: AiohttpClient) -> None:
    engine = FakeEngine()
    daemon, client = await started(repo, aiohttp_client, engine)
    hostile = '<script>alert("x")</script>&"'
    daemon.board.fleet_failed(hostile, at=datetime.now(UTC))
    daemon.board.entries[("prod-use1", "web-api")].reason = hostile
    page = await (await client.get("/")).text()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;" in page
    assert page.count("<script") == 1  # only the page's own, nonce-bearing script


async def test_failed_objects_are_listed_with_reasons(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    engine = FakeEngine()
    daemon = make_daemon(repo, engine)
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    engine.action = "failed"
    await daemon.cycle(trigger="start")
    page = await (await client.get("/")).text()
    assert page.count('data-state="failed"') == 8
    assert "<ul id=problems>" in page and "source down" in page
    text = await (await client.get("/metrics")).text()
    assert 'secretsync_failures_total{cluster="prod-use1"} 2.0' in text
    assert 'secretsync_cycles_total{outcome="failed",trigger="start"} 1.0' in text


async def test_webhook_without_secret_is_503(repo: Path, aiohttp_client: AiohttpClient) -> None:
    daemon = make_daemon(repo, FakeEngine(), key=None)
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    body = b'{"paths": ["secret/web/prod"]}'
    resp = await client.post("/v1/webhooks/vault", data=body, headers=signed(body))
    assert resp.status == 503


async def test_webhook_refusals_do_no_work(repo: Path, aiohttp_client: AiohttpClient) -> None:
    engine = FakeEngine()
    daemon = make_daemon(repo, engine, max_body=1024)
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon, max_body=1024))
    await daemon.cycle(trigger="start")
    body = b'{"paths": ["secret/web/prod"]}'
    post = client.post
    url = "/v1/webhooks/vault"
    assert (await post(url, data=body)).status == 401  # unsigned
    assert (await post(url, data=body, headers=signed(body, key=b"wrong"))).status == 401
    stale = signed(body, ts=int(time.time()) - 301)
    assert (await post(url, data=body, headers=stale)).status == 401
    future = signed(body, ts=int(time.time()) + 301)
    assert (await post(url, data=body, headers=future)).status == 401
    tampered = body.replace(b"prod", b"dev!")
    assert (await post(url, data=tampered, headers=signed(body))).status == 401
    big = b'{"paths": ["' + b"a" * 2000 + b'"]}'
    resp = await post(url, data=big, headers=signed(big))
    assert resp.status == 413

    async def chunks() -> Any:
        for _ in range(4):
            yield b"x" * 512

    assert (await post(url, data=chunks(), headers=signed(b"whatever"))).status == 413
    bad_json = b'{"paths": '
    assert (await post(url, data=bad_json, headers=signed(bad_json))).status == 400
    traversal = b'{"paths": ["secret/../etc"]}'
    assert (await post(url, data=traversal, headers=signed(traversal))).status == 400
    unknown = b'{"paths": ["secret/not/used"]}'
    resp = await post(url, data=unknown, headers=signed(unknown, msg_id="m-unknown"))
    assert resp.status == 202
    assert await resp.json() == {"status": "queued", "queued": 0, "ignored": 1}
    assert engine.calls == [None]  # only the start cycle
    assert not daemon._pending
    text = await (await client.get("/metrics")).text()
    assert 'secretsync_webhooks_total{outcome="unauthorized"} 5.0' in text
    assert 'secretsync_webhooks_total{outcome="too_large"} 2.0' in text
    assert 'secretsync_webhooks_total{outcome="bad_request"} 2.0' in text


async def test_signed_webhook_triggers_a_narrowed_cycle_once(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    engine = FakeEngine()
    daemon = make_daemon(repo, engine)
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    loop_task = asyncio.create_task(daemon.run_loop())
    try:
        await engine.wait_calls(1)
        body = json.dumps({"paths": ["secret/data/web/prod", "secret/nope"]}).encode()
        headers = signed(body, msg_id="msg_rotate")
        resp = await client.post("/v1/webhooks/vault", data=body, headers=headers)
        assert resp.status == 202
        assert await resp.json() == {"status": "queued", "queued": 1, "ignored": 1}
        await engine.wait_calls(2)
        assert engine.calls[1] == frozenset({"secret/web/prod"}), "queued by its one name"
        again = await client.post("/v1/webhooks/vault", data=body, headers=headers)
        assert again.status == 200 and (await again.json())["status"] == "duplicate"
        doc = await (await client.get("/v1/status")).json()
        assert doc["lastCycle"]["trigger"] == "webhook"
        # one failing cycle is logged and the loop goes on
        engine.explode = True
        body2 = b'{"paths": ["secret/web/staging"]}'
        resp = await client.post("/v1/webhooks/vault", data=body2, headers=signed(body2))
        assert resp.status == 202
        await engine.wait_calls(3)
        engine.explode = False
        body3 = b'{"paths": ["secret/web/dev"]}'
        resp = await client.post("/v1/webhooks/vault", data=body3, headers=signed(body3))
        await engine.wait_calls(4)
        assert engine.calls[3] == frozenset({"secret/web/dev"})
        assert not loop_task.done()
    finally:
        daemon.stop()
        async with asyncio.timeout(5):
            await loop_task
    assert len(engine.calls) == 4  # the duplicate did no work
    doc = daemon.board.document()
    assert doc["cycles"] == 4


async def test_both_names_of_one_vault_path_queue_one_item(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    """`secret/web/prod` and its KV v2 API form `secret/data/web/prod` are one path: one
    queued item, whether they come in one request or in two."""
    engine = GatedEngine()
    daemon = make_daemon(repo, engine)
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    loop_task = asyncio.create_task(daemon.run_loop())
    url = "/v1/webhooks/vault"
    try:
        await engine.wait_calls(1)
        both = json.dumps({"paths": ["secret/web/prod", "secret/data/web/prod"]}).encode()
        resp = await client.post(url, data=both, headers=signed(both))
        assert await resp.json() == {"status": "queued", "queued": 1, "ignored": 0}
        await engine.wait_calls(2)  # the narrowed cycle runs (held at the gate)
        for path in ("secret/data/web/staging", "secret/web/staging"):
            body = json.dumps({"paths": [path]}).encode()
            resp = await client.post(url, data=body, headers=signed(body))
            assert await resp.json() == {"status": "queued", "queued": 1, "ignored": 0}
        assert daemon._pending == {"secret/web/staging"}
        engine.gate.set()
        await engine.wait_calls(3)
    finally:
        engine.gate.set()
        daemon.stop()
        async with asyncio.timeout(5):
            await loop_task
    assert engine.calls[1:] == [frozenset({"secret/web/prod"}), frozenset({"secret/web/staging"})]


async def test_bad_commit_keeps_the_last_good_fleet(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    engine = FakeEngine()
    daemon, client = await started(repo, aiohttp_client, engine)
    (repo / "secrets" / "broken.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: x}\nspec: {bogus: 1}\n"
    )
    await daemon.cycle(trigger="interval")
    assert len(engine.calls) == 2  # the last good fleet still ran
    doc = await (await client.get("/v1/status")).json()
    assert "secrets/broken.yaml" in doc["fleet"]["error"]
    assert len(doc["objects"]) == 8
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert "refused" in (await resp.json())["checks"]["fleet"]
    page = await (await client.get("/")).text()
    assert "id=fleet-error" in page and "secrets/broken.yaml" in page
    (repo / "secrets" / "broken.yaml").unlink()
    await daemon.cycle(trigger="interval")
    assert (await (await client.get("/v1/status")).json())["fleet"]["error"] is None


async def test_real_engine_serves_no_values(
    repo: Path, aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    values = fleets.vault_docs()
    source = FakeSource(values)
    engine = Engine(
        sources={"vault": source},
        sinks=[GitSink(out_dir=repo / "rendered")],
        hmac_key=HMAC,
        clock=lambda: datetime.now(UTC),
    )
    daemon, client = await started(repo, aiohttp_client, engine)
    source.documents["web/prod"] = {"token": canary.new("wt-rotated")}
    await daemon.cycle(trigger="webhook", only_paths={"secret/web/prod"})
    served = "".join(
        [await (await client.get(p)).text() for p in ("/", "/v1/status", "/metrics", "/readyz")]
    )
    assert "synced" in served
    assert not canary.find_in_text(served)
    assert not canary.find_in_text(caplog.text)


@pytest.mark.parametrize(
    ("sinks", "undelivered"),
    [
        (
            {"git": False, "kube": True},
            {
                "prod-use1": "sealed, Git sink off",
                "prod-euw1": "sealed, Git sink off",
                "staging-use1": "sealed, Git sink off",
                "staging-euw1": "external, Git sink off",
            },
        ),
        ({"git": True, "kube": False}, {"dev-use1": "direct, Kubernetes sink off"}),
    ],
)
async def test_objects_no_sink_of_the_daemon_delivers_say_so(
    repo: Path, aiohttp_client: AiohttpClient, sinks: dict[str, bool], undelivered: dict[str, str]
) -> None:
    values = fleets.vault_docs()
    settings = DaemonSettings(
        fleet_path=repo, hmac_key=HMAC, interval_s=3600, cluster_timeout_s=10, **sinks
    )
    daemon = Daemon(settings=settings, make_sources=lambda f, e: {"vault": FakeSource(values)})
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    try:
        await daemon.cycle(trigger="start")
        doc = await (await client.get("/v1/status")).json()
        page = await (await client.get("/")).text()
    finally:
        await daemon._wiring.aclose()
    seen = {(o["cluster"], o["state"], o["reason"]) for o in doc["objects"]}
    for cluster, why in undelivered.items():
        reason = f"not delivered by this daemon (delivery {why})"
        assert (cluster, "undelivered", reason) in seen, cluster
        assert reason in html.unescape(page)
    assert {c for c, state, _ in seen if state == "undelivered"} == set(undelivered)
    assert "pending" not in {state for _, state, _ in seen}
    assert doc["totals"]["undelivered"] == sum(
        1 for o in doc["objects"] if o["cluster"] in undelivered
    )


async def test_page_times_are_readable_with_their_age_on_hover(repo: Path) -> None:
    loaded = datetime(2026, 12, 6, 17, 14, 15, tzinfo=UTC)
    fleet = load.load_fleet(repo)
    board = StatusBoard()
    board.fleet_loaded(fleet, plan.plan(fleet), at=loaded)
    report = await FakeEngine().run_cycle(fleet)
    board.record(report, started=loaded + timedelta(seconds=30), duration_s=1.5, trigger="start")
    page = render_page(board, nonce="n", now=loaded + timedelta(hours=2, minutes=1))

    assert (
        'loaded <time datetime="2026-12-06T17:14:15+00:00" title="2 h ago">'
        "2026-12-06 17:14:15 UTC</time>"
    ) in page
    assert (
        'started <time datetime="2026-12-06T17:14:45+00:00" title="2 h ago">'
        "2026-12-06 17:14:45 UTC</time>"
    ) in page
    assert "(last sync 2026-12-06 17:14:45 UTC, 2 h ago)" in page
    visible = re.sub(r"<[^>]*>", "", page)  # text outside tags and their attributes
    assert "T17:14" not in visible and "+00:00" not in visible
    later = render_page(board, nonce="n", now=loaded + timedelta(seconds=75))
    assert 'title="1 min ago"' in later and 'title="45 s ago"' in later


class GatedEngine(FakeEngine):
    """A FakeEngine whose narrowed cycles wait for `gate`: a cycle in progress during a burst."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def run_cycle(
        self,
        fleet: Fleet,
        *,
        only_paths: Collection[str] | None = None,
        planned: Sequence[DesiredSecret] | None = None,
        certificates: FleetCertificates | None = None,
    ) -> CycleReport:
        report = await super().run_cycle(
            fleet, only_paths=only_paths, planned=planned, certificates=certificates
        )
        if only_paths is not None:
            await self.gate.wait()
        return report


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_flood_of_webhooks_is_bounded_and_coalesced_per_path(
    repo: Path, aiohttp_client: AiohttpClient
) -> None:
    """W4: 1,000 requests (signed for the fleet's paths, duplicates, unknown paths, unsigned)
    while a narrowed cycle runs: no 5xx, the queue is a set of the paths in use, and the burst
    becomes exactly one more narrowed cycle naming each rotated path once."""
    engine = GatedEngine()
    daemon = make_daemon(repo, engine)
    client: TestClient[Any, Any] = await aiohttp_client(make_app(daemon))
    loop_task = asyncio.create_task(daemon.run_loop())
    url = "/v1/webhooks/vault"
    used = ["secret/web/prod", "secret/data/web/staging", "secret/web/dev"]
    try:
        await engine.wait_calls(1)
        first = json.dumps({"paths": [used[0]]}).encode()
        assert (await client.post(url, data=first, headers=signed(first))).status == 202
        await engine.wait_calls(2)  # the narrowed cycle for the first path now runs (gated)
        rss_before = _rss_bytes()
        replayed = signed(first, msg_id="msg_flood_dup")

        def request(i: int) -> tuple[bytes, dict[str, str]]:
            kind = i % 4
            if kind == 0:  # signed, one of the paths in use
                body = json.dumps({"paths": [used[i % 3]]}).encode()
                return body, signed(body)
            if kind == 1:  # signed, a path the fleet does not use
                body = json.dumps({"paths": [f"secret/unused/p{i}"]}).encode()
                return body, signed(body)
            if kind == 2:  # the same id again and again
                return first, replayed
            body = json.dumps({"paths": [used[1]]}).encode()  # unsigned
            return body, {"Content-Type": "application/json"}

        statuses: dict[int, int] = {}
        started = time.monotonic()
        for batch in range(0, 1000, 50):
            answers = await asyncio.gather(
                *(
                    client.post(url, data=body, headers=headers)
                    for body, headers in map(request, range(batch, batch + 50))
                )
            )
            for resp in answers:
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                resp.release()
            assert daemon._pending <= {"secret/web/prod", "secret/web/staging", "secret/web/dev"}
        elapsed = time.monotonic() - started
        growth = _rss_bytes() - rss_before

        # 250 in use + 250 unknown + the first of the replayed id: 202; its 249 replays: 200
        assert statuses == {202: 501, 200: 249, 401: 250}, statuses
        assert not [s for s in statuses if s >= 500]
        assert len(engine.calls) == 2, "the burst waits for the running cycle"
        canonical = {"secret/web/prod", "secret/web/staging", "secret/web/dev"}
        assert daemon._pending == canonical
        engine.gate.set()
        await engine.wait_calls(3)
        assert engine.calls[2] == frozenset(canonical), "one narrowed cycle, each path once"
        assert not daemon._pending
    finally:
        engine.gate.set()
        daemon.stop()
        async with asyncio.timeout(5):
            await loop_task
    assert len(engine.calls) == 3
    assert growth < 32 * 1024 * 1024, f"RSS grew {growth} bytes over the flood"
    assert elapsed < 60, elapsed
    text = await (await client.get("/metrics")).text()
    assert 'secretsync_webhooks_total{outcome="unauthorized"} 250.0' in text

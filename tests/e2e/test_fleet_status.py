"""The fleet-wide status across three shard replicas: real Daemons, each serving its HTTP
surface on 127.0.0.1 with the API guard on (token file + peer tokens), fetching each other's
`?scope=local` status over real connections. The engine is ours (ShardEngine): each replica
reports only its own shard's clusters, as the Lease gate makes the real one do."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web as aioweb

from secretsync.core.model import DesiredSecret
from secretsync.daemon import apiauth, fleetview, peers
from secretsync.daemon.service import Daemon
from secretsync.daemon.web import make_app
from tests.e2e.test_web import KEY, FakeEngine, MakeRepo, make_daemon
from tests.support import canary, fleets

SHARDS = {"prod-use1": 0, "prod-euw1": 1, "staging-use1": 1, "staging-euw1": 2, "dev-use1": 2}
ACTIONS = ("create", "failed", "unchanged")  # what each shard's replica reports


def shard_of(cluster: str) -> int:
    return SHARDS[cluster]


class ShardEngine(FakeEngine):
    """Reports the planned objects of one shard's clusters only."""

    def __init__(self, shard: int) -> None:
        super().__init__()
        self.shard = shard
        self.action = ACTIONS[shard]
        self.content_hash = f"hash-{shard}"

    def answers(self, desired: DesiredSecret) -> bool:
        return shard_of(desired.cluster.name) == self.shard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    shard: int
    daemon: Daemon
    view: fleetview.FleetView
    url: str
    app: aioweb.Application
    runner: aioweb.AppRunner | None = None

    async def start(self) -> None:
        self.runner = aioweb.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        port = int(self.url.rsplit(":", 1)[1])
        await aioweb.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def make_replicas(
    repo: Path, tokens: Path, *, count_of: Callable[[int], int] = lambda _i: 3
) -> list[Replica]:
    urls = [f"http://127.0.0.1:{_free_port()}" for _ in range(3)]
    out: list[Replica] = []
    for i in range(3):
        daemon = make_daemon(repo, ShardEngine(i))
        identity = f"replica-{i}"
        shards = count_of(i)
        daemon.board.leadership = lambda i=i, identity=identity, shards=shards: {
            "identity": identity,
            "shards": shards,
            "shardIndex": i,
            "leases": {f"secretsync-shard-{i}": True},
            "leading": True,
            "gitWriter": i == 0,
            "clusters": sorted(n for n, s in SHARDS.items() if s == i),
        }
        view = fleetview.FleetView(
            board=daemon.board,
            peer_urls=tuple(u for j, u in enumerate(urls) if j != i),
            key=KEY,
            shards=shards,
            shard_index=i,
            shard_of=shard_of,
            count=daemon.metrics.peer_status,
            cache_s=60,  # the tests expire it themselves (`expire`)
            wait_s=2,
            timeout_s=2,
        )
        guard = apiauth.Guard([peers.PeerTokens(KEY), apiauth.TokenFile(tokens)])
        app = make_app(daemon, guard=guard, view=view)
        out.append(Replica(shard=i, daemon=daemon, view=view, url=urls[i], app=app))
    return out


def expire(view: fleetview.FleetView) -> None:
    """The next fleet-wide request fetches the peers again (as after `CACHE_S`)."""
    view._round_done = -float("inf")


@pytest.fixture
def reader() -> str:
    return canary.new("reader-token")


@pytest.fixture
async def replicas(
    fleet_repo: MakeRepo, tmp_path: Path, reader: str
) -> AsyncIterator[list[Replica]]:
    repo = fleets.write_fleet(fleet_repo)
    tokens = tmp_path / "tokens"
    tokens.write_text(reader + "\n")
    group = make_replicas(repo, tokens)
    try:
        for r in group:
            await r.start()
            await r.daemon.cycle(trigger="start")
        yield group
    finally:
        for r in group:
            await r.stop()
            await r.view.aclose()


async def get(url: str, path: str, *, token: str | None, status: int = 200) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + path, headers=headers) as resp,
    ):
        assert resp.status == status, await resp.text()
        doc: dict[str, Any] = await resp.json() if resp.content_type == "application/json" else {}
        return doc


def fetches(r: Replica, outcome: str) -> float:
    value = r.daemon.metrics.registry.get_sample_value(
        "secretsync_peer_status_fetches_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_any_replica_answers_for_the_whole_fleet(
    replicas: list[Replica], reader: str
) -> None:
    planned = {(k[0], k[1]) for k in replicas[0].daemon.board.entries}
    docs = [await get(r.url, "/v1/status", token=reader) for r in replicas]
    for r, doc in zip(replicas, docs, strict=True):
        objects = {(o["cluster"], o["fleetSecret"]): o for o in doc["objects"]}
        assert set(objects) == planned, f"replica {r.shard}"
        for (cluster, _), o in objects.items():
            want = {0: "synced", 1: "failed", 2: "synced"}[shard_of(cluster)]
            assert o["state"] == want, (r.shard, o)
            if shard_of(cluster) == 2:
                assert o["contentHash"] == "hash-2"
        for c in doc["clusters"]:
            s = shard_of(c["name"])
            assert c["shard"] == s and c["replica"] == f"replica-{s}" and c["reachable"]
            assert (c["peer"] is None) == (s == r.shard)
            assert c["fetchedAt"]
        assert [(x["shard"], x["reachable"], x["merged"]) for x in doc["replicas"]] == [
            (0, True, True),
            (1, True, True),
            (2, True, True),
        ]
        assert doc["totals"]["failed"] == sum(1 for k in planned if shard_of(k[0]) == 1)
    # the same fleet from every replica
    assert [d["totals"] for d in docs] == [docs[0]["totals"]] * 3


async def test_local_scope_is_the_shard_and_asks_no_one(
    replicas: list[Replica], reader: str
) -> None:
    a = replicas[0]
    before = fetches(a, "ok") + fetches(a, "failed")
    doc = await get(a.url, "/v1/status?scope=local", token=reader)
    assert {o["cluster"] for o in doc["objects"]} == {"prod-use1"}
    assert [c["name"] for c in doc["clusters"]] == ["prod-use1"]
    assert "replicas" not in doc
    summary = await get(a.url, "/v1/status/summary?scope=local", token=reader)
    assert list(summary["clusters"]) == ["prod-use1"]
    assert fetches(a, "ok") + fetches(a, "failed") == before  # no peer was asked
    await get(a.url, "/v1/status?scope=everything", token=reader, status=400)
    await get(a.url, "/v1/status?scope=local&scope=fleet", token=reader, status=400)


async def test_pages_and_filters_apply_to_the_merged_view(
    replicas: list[Replica], reader: str
) -> None:
    b = replicas[1]
    whole = await get(b.url, "/v1/status", token=reader)
    keys = [(o["cluster"], o["fleetSecret"]) for o in whole["objects"]]
    seen: list[tuple[str, str]] = []
    token: str | None = None
    while True:
        page = await get(
            b.url, "/v1/status?limit=2" + (f"&continue={token}" if token else ""), token=reader
        )
        assert page["totals"] == whole["totals"] and len(page["replicas"]) == 3
        seen += [(o["cluster"], o["fleetSecret"]) for o in page["objects"]]
        token = page["continue"]
        if token is None:
            break
    assert seen == keys == sorted(keys)
    failed = await get(b.url, "/v1/status?state=failed", token=reader)
    assert {shard_of(o["cluster"]) for o in failed["objects"]} == {1}
    other = await get(b.url, "/v1/status?cluster=dev-use1", token=reader)
    assert {o["cluster"] for o in other["objects"]} == {"dev-use1"}
    assert [c["shard"] for c in other["clusters"]] == [2]
    summary = await get(b.url, "/v1/status/summary", token=reader)
    assert summary["totals"] == whole["totals"]
    assert set(summary["clusters"]) == set(SHARDS)
    assert [x["shard"] for x in summary["replicas"]] == [0, 1, 2]


async def test_peers_are_fetched_once_per_round_concurrently(
    replicas: list[Replica], reader: str
) -> None:
    a = replicas[0]
    expire(a.view)
    before = fetches(a, "ok")
    await asyncio.gather(*(get(a.url, "/v1/status/summary", token=reader) for _ in range(5)))
    assert fetches(a, "ok") - before == 2  # one request per peer for five readers
    await get(a.url, "/", token=reader)
    assert fetches(a, "ok") - before == 2  # within the cache


async def test_an_unreachable_peer_is_shown_with_its_shard(
    replicas: list[Replica], reader: str
) -> None:
    a, _, c = replicas
    first = await get(a.url, "/v1/status", token=reader)
    fetched = next(x["fetchedAt"] for x in first["replicas"] if x["shard"] == 2)
    await c.stop()
    expire(a.view)
    t0 = time.monotonic()
    doc = await get(a.url, "/v1/status", token=reader)
    assert time.monotonic() - t0 < 2.5  # a dead peer costs at most its timeout
    assert {o["cluster"] for o in doc["objects"]} == set(SHARDS)  # nothing dropped
    shard2 = [c for c in doc["clusters"] if c["shard"] == 2]
    assert {c["name"] for c in shard2} == {"staging-euw1", "dev-use1"}
    assert all(not c["reachable"] and c["fetchedAt"] == fetched for c in shard2)
    replica = next(x for x in doc["replicas"] if x["shard"] == 2)
    assert replica["reachable"] is False and replica["peer"] == c.url
    assert replica["error"] == "connection refused or unreachable"
    # its last good answer stays, marked as of when it was fetched
    assert {o["state"] for o in doc["objects"] if shard_of(o["cluster"]) == 2} == {"synced"}
    assert fetches(a, "failed") >= 1
    async with (
        aiohttp.ClientSession() as session,
        session.get(a.url + "/", headers={"Authorization": f"Bearer {reader}"}) as resp,
    ):
        page = await resp.text()
    assert "id=replica-2" in page and "connection refused or unreachable" in page
    assert "shard 2 · replica-2 · unreachable, states of" in page


async def test_a_shard_no_one_answered_for_is_listed_as_unknown(
    fleet_repo: MakeRepo, tmp_path: Path, reader: str
) -> None:
    repo = fleets.write_fleet(fleet_repo)
    tokens = tmp_path / "tokens"
    tokens.write_text(reader + "\n")
    group = make_replicas(repo, tokens, count_of=lambda i: 4 if i == 2 else 3)
    try:
        for r in group[:2]:  # replica 2 never starts; a replica 2 with 4 shards is not merged
            await r.start()
            await r.daemon.cycle(trigger="start")
        doc = await get(group[0].url, "/v1/status", token=reader)
        assert {o["cluster"] for o in doc["objects"]} == set(SHARDS)
        for o in doc["objects"]:
            if shard_of(o["cluster"]) == 2:
                assert o["state"] == "pending"
                assert (
                    o["reason"] == "shard 2: no replica has answered for it; planned, state unknown"
                )
        shard2 = next(x for x in doc["replicas"] if x["shard"] == 2)
        assert shard2["reachable"] is False and shard2["merged"] is False
        assert "connection refused" in shard2["error"]
        await group[2].start()  # it answers now, with another shard count
        expire(group[0].view)
        doc = await get(group[0].url, "/v1/status", token=reader)
        assert any(
            x["peer"] == group[2].url and x["error"] == "runs with --shards 4, not 3: not merged"
            for x in doc["replicas"]
        )
    finally:
        for r in group:
            await r.stop()
            await r.view.aclose()


async def test_peer_tokens_read_the_status_only_and_once(
    replicas: list[Replica], reader: str
) -> None:
    a = replicas[0]
    await get(a.url, "/v1/status", token=None, status=401)
    token = peers.peer_token(KEY, path="/v1/status", now=time.time())
    await get(a.url, "/v1/status?scope=local", token=token)
    await get(a.url, "/v1/status?scope=local", token=token, status=401)  # a replay
    for path in ("/metrics", "/", "/v1/status/summary"):
        made = peers.peer_token(KEY, path="/v1/status", now=time.time())
        await get(a.url, path, token=made, status=401)  # made for another path
    other_key = peers.peer_token(b"another-webhook-key", path="/v1/status", now=time.time())
    await get(a.url, "/v1/status", token=other_key, status=401)
    stale = peers.peer_token(KEY, path="/v1/status", now=time.time() - 120)
    await get(a.url, "/v1/status", token=stale, status=401)


async def test_a_hung_peer_costs_a_reader_at_most_the_wait(replicas: list[Replica]) -> None:
    """A peer that accepts and never answers: the reader gets the fleet after `wait_s`, with
    the answers that came; the round goes on and records the hung peer's timeout."""
    a, b, _ = replicas
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        view = fleetview.FleetView(
            board=a.daemon.board,
            peer_urls=(b.url, hung_url),
            key=KEY,
            shards=3,
            shard_index=0,
            shard_of=shard_of,
            wait_s=0.5,
            timeout_s=2,
        )
        try:
            t0 = time.monotonic()
            board = await view.fleet()
            assert time.monotonic() - t0 < 1.5
            doc = board.document()
            by_shard = {x["shard"]: x for x in doc["replicas"]}
            assert by_shard[1]["reachable"] and by_shard[1]["merged"]  # b answered in time
            assert by_shard[2]["reachable"] is False
            assert by_shard[2]["error"] == (
                f"no replica has answered for this shard ({hung_url}: no answer yet)"
            )
            round_ = view._round
            assert round_ is not None
            async with asyncio.timeout(5):
                await asyncio.shield(round_)
            assert view.answers[hung_url].error == "no answer within 2 s"
        finally:
            await view.aclose()

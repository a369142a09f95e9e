"""Benchmark: `/v1/status` served whole vs one page, for a board of `--clusters` x `--secrets`.

    python bench/status_pages.py [--clusters 100] [--secrets 1000] [--limit 500] [--runs 5]

Builds a StatusBoard in memory (every object synced, with two refs, a Vault version, a content
hash and a sync time, as after a cycle of a Vault-backed fleet), then serves it through the real
aiohttp app (`web.make_app`, aiohttp's test server on loopback) and times, per request, the
whole document (`GET /v1/status`), the first page, a page deep in the listing (by its
`continue` token), a filtered query (`?cluster=…&state=failed`) and `/v1/status/summary`.
Latency is client-side wall time per request (median of `--runs`); bytes are the response
bodies. Prints a table and one JSON document on the last line.

With `--shards N` (N > 1) it also runs N replicas on loopback, each a process of its own with
the same board and a real `FleetView` naming the others as peers, and times from replica 0 a
peer's `?scope=local` answer, a fleet-wide page with the peers fetched first (cold: the cache
expired) and from the cache (warm), and the fleet-wide summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web as aioweb
from aiohttp.test_utils import TestClient, TestServer

from secretsync.daemon import fleetview, web
from secretsync.daemon.metrics import Metrics
from secretsync.daemon.sharding import shard_of
from secretsync.daemon.status import ClusterInfo, Entry, State, StatusBoard


class Backend:
    def __init__(self, board: StatusBoard) -> None:
        self.board = board
        self.metrics = Metrics()
        self.verifier = None

    def readiness(self) -> web.Readiness:
        return web.Readiness(ready=True)

    def submit(self, paths: tuple[str, ...]) -> tuple[int, int]:
        return 0, len(paths)


def build(clusters: int, secrets: int) -> StatusBoard:
    board = StatusBoard()
    at = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)
    board.fleet_name, board.fleet_loaded_at = "bench", at
    for c in range(clusters):
        name = f"cluster-{c:03d}"
        board.clusters[name] = ClusterInfo(name=name, delivery="direct", labels={"env": "prod"})
        for s in range(secrets):
            fs = f"secret-{s:04d}"
            board.entries[(name, fs)] = Entry(
                cluster=name,
                fleet_secret=fs,
                namespace="apps",
                name=fs,
                delivery="direct",
                state=State.SYNCED,
                refs=(f"vault:secret/apps/{fs}#password", f"vault:secret/apps/{fs}#user"),
                versions={f"secret/apps/{fs}": "3"},
                content_hash="sha256:" + "ab" * 32,
                last_sync=at,
                sinks=("kube",),
            )
    board.generation = 1
    return board


async def measure(board: StatusBoard, *, limit: int, runs: int) -> dict[str, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(web.make_app(Backend(board))))
    await client.start_server()
    try:
        first = await (await client.get(f"/v1/status?limit={limit}")).json()
        # a token in the middle of the listing: walk pages until one ends past the middle key
        middle = board.sorted_keys()[len(board.entries) // 2]
        deep = token = first["continue"]
        while token:
            doc = await (await client.get(f"/v1/status?limit={limit}&continue={token}")).json()
            last = doc["objects"][-1]
            if (last["cluster"], last["fleetSecret"]) >= middle or not doc["continue"]:
                break
            deep = token = doc["continue"]
        queries = {
            "whole document": "/v1/status",
            f"first page (limit={limit})": f"/v1/status?limit={limit}",
            f"page mid-listing (limit={limit})": f"/v1/status?limit={limit}&continue={deep}",
            "filter: one cluster, state=failed": "/v1/status?cluster=cluster-050&state=failed",
            "summary": "/v1/status/summary",
        }
        out: dict[str, Any] = {}
        for what, path in queries.items():
            times, size = [], 0
            for _ in range(runs):
                started = time.perf_counter()
                resp = await client.get(path)
                body = await resp.read()
                times.append(time.perf_counter() - started)
                assert resp.status == 200, body[:200]
                size = len(body)
            out[what] = {"bytes": size, "seconds_median": statistics.median(times)}
        return out
    finally:
        await client.close()


def replica(
    clusters: int, secrets: int, *, shards: int, index: int, urls: list[str]
) -> tuple[StatusBoard, fleetview.FleetView]:
    """Replica `index` of `shards`: the same board as the others, a FleetView of the rest."""
    board = build(clusters, secrets)
    board.leadership = lambda: {
        "identity": f"replica-{index}", "shards": shards, "shardIndex": index,
        "leases": {}, "leading": True, "gitWriter": index == 0, "clusters": [],
    }  # fmt: skip
    view = fleetview.FleetView(
        board=board,
        peer_urls=tuple(u for j, u in enumerate(urls) if j != index),
        key=None,
        shards=shards,
        shard_index=index,
        shard_of=lambda name: shard_of(name, shards),
    )
    return board, view


def serve_peer(clusters: int, secrets: int, shards: int, index: int, urls: list[str]) -> None:
    """A peer replica in a process of its own, as in a deployment, until terminated."""
    board, view = replica(clusters, secrets, shards=shards, index=index, urls=urls)
    port = int(urls[index].rsplit(":", 1)[1])
    aioweb.run_app(
        web.make_app(Backend(board), view=view),
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
    )


async def measure_shards(
    clusters: int, secrets: int, *, shards: int, limit: int, runs: int
) -> dict[str, Any]:
    ports = []
    for _ in range(shards):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    context = multiprocessing.get_context("spawn")
    peers = [
        context.Process(target=serve_peer, args=(clusters, secrets, shards, i, urls))
        for i in range(1, shards)
    ]
    for process in peers:
        process.start()
    board, view = replica(clusters, secrets, shards=shards, index=0, urls=urls)
    outcomes: list[str] = []
    view._count = outcomes.append
    server = TestServer(web.make_app(Backend(board), view=view), port=ports[0])
    await server.start_server()
    servers, views = [server], [view]
    deadline = time.monotonic() + 300
    for port in ports[1:]:  # each peer builds its board first
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "a peer replica did not start"
            await asyncio.sleep(0.2)  # poll interval under the deadline above
    client: TestClient[Any, Any] = TestClient(servers[0])
    await client.start_server()
    try:
        queries = {
            "peer answer (?scope=local)": (f"{urls[1]}/v1/status?scope=local", False),
            f"fleet-wide page (limit={limit}), cold": (f"/v1/status?limit={limit}", True),
            f"fleet-wide page (limit={limit}), warm": (f"/v1/status?limit={limit}", False),
            "fleet-wide summary, warm": ("/v1/status/summary", False),
        }
        out: dict[str, Any] = {}
        for what, (path, cold) in queries.items():
            times, size = [], 0
            for _ in range(runs):
                if cold:
                    views[0]._round_done = -float("inf")  # the cache expired
                started = time.perf_counter()
                resp = await (
                    client.session.get(path) if path.startswith("http") else client.get(path)
                )
                body = await resp.read()
                times.append(time.perf_counter() - started)
                assert resp.status == 200, body[:200]
                size = len(body)
            out[what] = {"bytes": size, "seconds_median": statistics.median(times)}
        errors = {a.error for a in views[0].answers.values() if a.error}
        assert "failed" not in outcomes, f"a peer did not answer: {errors}"
        return out
    finally:
        await client.close()
        for server, view in zip(servers, views, strict=True):
            await view.aclose()
            await server.close()
        for process in peers:
            process.terminate()
            process.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args()
    board = build(args.clusters, args.secrets)
    results = asyncio.run(measure(board, limit=args.limit, runs=args.runs))
    if args.shards > 1:
        del board
        results |= asyncio.run(
            measure_shards(
                args.clusters, args.secrets, shards=args.shards, limit=args.limit, runs=args.runs
            )
        )
    print(f"{'request':40} {'bytes':>12} {'median s':>10}")
    for what, r in results.items():
        print(f"{what:40} {r['bytes']:>12,} {r['seconds_median']:>10.4f}")
    print(
        json.dumps(
            {
                "objects": args.clusters * args.secrets,
                "shards": args.shards,
                "clusters": args.clusters,
                "runs": args.runs,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()

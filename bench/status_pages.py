"""Benchmark: `/v1/status` served whole vs one page, for a board of `--clusters` x `--secrets`.

    python bench/status_pages.py [--clusters 100] [--secrets 1000] [--limit 500] [--runs 5]

Builds a StatusBoard in memory (every object synced, with two refs, a Vault version, a content
hash and a sync time, as after a cycle of a Vault-backed fleet), then serves it through the real
aiohttp app (`web.make_app`, aiohttp's test server on loopback) and times, per request, the
whole document (`GET /v1/status`), the first page, a page deep in the listing (by its
`continue` token), a filtered query (`?cluster=…&state=failed`) and `/v1/status/summary`.
Latency is client-side wall time per request (median of `--runs`); bytes are the response
bodies. Prints a table and one JSON document on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from secretsync.daemon import web
from secretsync.daemon.metrics import Metrics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    board = build(args.clusters, args.secrets)
    results = asyncio.run(measure(board, limit=args.limit, runs=args.runs))
    print(f"{'request':40} {'bytes':>12} {'median s':>10}")
    for what, r in results.items():
        print(f"{what:40} {r['bytes']:>12,} {r['seconds_median']:>10.4f}")
    print(
        json.dumps(
            {
                "objects": len(board.entries),
                "clusters": args.clusters,
                "runs": args.runs,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()

"""Z2, a bounded soak: 1,000 engine cycles on a small fleet, with sinks and sources of our own.

Five clusters (four direct, one sealed) by 8 FleetSecrets; every 10th cycle a value rotates,
every 50th a path fails for one cycle (kept, then repaired), every 100th an object drifts.
After a warm-up the process's RSS may grow < 5 %, Python's traced heap < 1 MiB, and open file
descriptors, threads and asyncio tasks must come back to what they were.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import tracemalloc
from pathlib import Path

from secretsync.core import errors
from secretsync.core.model import Observed
from secretsync.fleet import load
from tests.support import canary, cycles, keys
from tests.support.fakes import FakeSource, MemorySink

CYCLES = 1000
WARMUP = 150
SECRETS = 8
KEY = b"soak-hmac-key"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def build(make: object, tmp: Path) -> Path:
    assert callable(make)
    clusters = [
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: c{i}, labels: {{env: prod, n: '{i}'}}}}\nspec: {{delivery: direct}}\n"
        for i in range(4)
    ]
    clusters.append(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        "metadata: {name: sealed, labels: {env: prod, n: s}}\n"
        "spec: {delivery: sealed, sealedSecrets: {certFile: certs/sealed.pem}}\n"
    )
    secret_docs = [
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: s{i}}}\nspec:\n  clusterSelector: {{matchLabels: {{env: prod}}}}\n"
        f"  target: {{name: s{i}, namespace: ns{i % 3}}}\n"
        "  data:\n"
        f"    password: {{vault: {{path: app/s{i}, key: password}}}}\n"
        f"    user: {{vault: {{path: app/shared, key: user}}}}\n"
        "    where: {value: 'on {{ cluster.name }}'}\n"
        for i in range(SECRETS)
    ]
    root: Path = make(
        {
            "secretsync.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\n"
            "metadata: {name: soak}\nspec:\n  defaults: {delivery: direct}\n",
            "clusters/all.yaml": "---\n".join(clusters),
            "secrets/all.yaml": "---\n".join(secret_docs),
            "certs/sealed.pem": keys.cert_pem(keys.rsa_key(0)).decode(),
        }
    )
    return root


def test_a_thousand_cycles_leak_no_memory_fds_threads_or_tasks(
    fleet_repo: object, tmp_path: Path
) -> None:
    root = build(fleet_repo, tmp_path)
    fleet = load.load_fleet(root)
    source = FakeSource(
        {f"app/s{i}": {"password": canary.new(f"soak{i}")} for i in range(SECRETS)}
        | {"app/shared": {"user": canary.new("soak-user")}}
    )
    sink = MemorySink()
    engine = cycles.engine(source, sink, key=KEY, cluster_timeout_s=30.0)
    objects = 5 * SECRETS
    samples: dict[str, int] = {}
    # The session keeps every log record for the canary scan; at DEBUG that list would be the
    # only thing growing. The soak runs at INFO, so what it still logs is kept and scanned.
    logging.getLogger("secretsync").setLevel(logging.INFO)

    async def soak() -> tuple[float, int, int]:
        nonlocal samples
        started = 0.0
        for n in range(CYCLES):
            if n == WARMUP:
                gc.collect()
                tracemalloc.start()
                samples = {
                    "rss": rss_kib(),
                    "heap": tracemalloc.get_traced_memory()[0],
                    "fds": fds(),
                    "threads": threading.active_count(),
                }
                started = time.monotonic()
            rotate = n % 10 == 9
            if rotate:
                i = n % SECRETS
                source.documents[f"app/s{i}"] = {"password": canary.new(f"soak{i}-{n}")}
            failing = n % 50 == 25
            if failing:
                source.failing["app/s3"] = errors.SourceUnavailable("vault: down (injected)")
            drift = n % 100 == 50
            if drift:
                held = sink.objects["c1"]
                key = next(iter(held))
                held[key] = Observed(key=key, kind="Secret", owned=True, content_hash="hand-edited")
            report = await engine.run_cycle(fleet)
            source.failing.clear()
            source.reads.clear()
            assert len(report.items) == objects, n
            if failing:
                assert {i.name for i in report.failures} == {"s3"}, n
                assert report.deletes == 0
            else:
                assert report.ok, (n, report.failures, report.failed_clusters)
            if n > 0 and not (rotate or failing or drift) and n % 50 != 26:
                assert report.writes == 0, (n, report.writes)
            assert len(asyncio.all_tasks()) == 1, "a task outlived its cycle"
        return time.monotonic() - started, fds(), threading.active_count()

    try:
        elapsed, fds_after, threads_after = asyncio.run(soak())
        gc.collect()
        heap_growth = tracemalloc.get_traced_memory()[0] - samples["heap"]
    finally:
        tracemalloc.stop()
        logging.getLogger("secretsync").setLevel(logging.NOTSET)
    rss_growth = (rss_kib() - samples["rss"]) / samples["rss"]
    assert sink.deletes == 0
    assert sum(len(v) for v in sink.objects.values()) == objects
    assert rss_growth < 0.05, f"RSS grew {rss_growth:.1%} over {CYCLES - WARMUP} cycles"
    assert heap_growth < 1024 * 1024, f"Python heap grew {heap_growth} bytes"
    assert fds_after == samples["fds"], "file descriptors leaked"
    assert threads_after == samples["threads"], "threads leaked"
    print(
        f"soak: {CYCLES - WARMUP} cycles in {elapsed:.1f}s, RSS {rss_growth:+.2%}, "
        f"heap {heap_growth:+d} B, {sink.writes} writes"
    )

"""Sync benchmark: N real kube-apiservers (built by scripts/build-kube.sh) x M Secrets.

Measures, in one run on the same fleet and the same clusters:
- secretsync `sync` cold (nothing there), warm (nothing changed: zero writes), API requests;
- the scripted baseline of bench/baselines.py: per cluster and secret, GET then create or
  replace (typed kubernetes client), cold and warm, in its own namespace.

    python bench/sync.py [--clusters 3] [--secrets 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import baselines
import harness
from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from secretsync.app import runtime
from secretsync.engine.cycle import Engine
from secretsync.fleet import load
from secretsync.kube.clusters import ClientFactory
from secretsync.sinks.kube.sink import KubeSink
from tests.support.kubecluster import KubeCluster, running_clusters

KEY = b"bench-sync-hmac-key"


def build_fleet(root: Path, clusters: list[KubeCluster], secrets: int, namespace: str) -> None:
    baselines.write_literal_fleet(
        root,
        kubeconfigs={c.name: c.kubeconfig(root.parent / f"{c.name}.yaml") for c in clusters},
        labels={"env": "prod"},
        secrets=secrets,
        namespace=namespace,
    )


def kube_cycle(root: Path) -> tuple[Any, KubeSink, float]:
    """One `sync` cycle of the fleet repo `root` through Engine + KubeSink with their defaults,
    the sink closed after it: (report, sink, wall seconds of the cycle and the close)."""
    fleet = load.load_fleet(root)
    sink = KubeSink(clients=ClientFactory(root=root), hmac_key=KEY)
    engine = Engine(sources={}, sinks=[sink], hmac_key=KEY, clock=lambda: datetime.now(UTC))

    async def cycle() -> Any:
        try:
            return await engine.run_cycle(fleet)
        finally:
            await harness.close_any(sink)

    t0 = time.perf_counter()
    report = asyncio.run(cycle())
    return report, sink, time.perf_counter() - t0


def run_sync(root: Path) -> tuple[float, dict[str, int]]:
    report, sink, elapsed = kube_cycle(root)
    assert report.ok, (report.failures[:3], report.failed_clusters)
    return elapsed, {"requests": sink.requests, "writes": sink.writes}


def naive(kubeconfigs: dict[str, Path], secrets: int, namespace: str) -> tuple[float, int]:
    """The scripted baseline: GET then create-or-replace, per cluster and secret, one at a time."""
    wanted = [
        item
        for name in kubeconfigs
        for item in baselines.literal_secrets(name, secrets, namespace=namespace)
    ]
    t0 = time.perf_counter()
    requests = baselines.scripted_direct(wanted, kubeconfig=kubeconfigs.__getitem__)
    return time.perf_counter() - t0, requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runtime.tune()
    work = Path(tempfile.mkdtemp(prefix="secretsync-bench-sync-"))
    names = [f"bench-{i}" for i in range(args.clusters)]
    with running_clusters(names, workdir=work) as clusters:
        for c in clusters:
            with c.api_client() as api:
                for ns in ("bench", "naive"):
                    k8s.CoreV1Api(api).create_namespace(
                        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns))
                    )
        root = work / "fleet"
        build_fleet(root, clusters, args.secrets, "bench")
        cold_s, cold = run_sync(root)
        warm_s, warm = run_sync(root)
        kubeconfigs = {c.name: work / f"{c.name}.yaml" for c in clusters}
        naive_cold_s, naive_cold_req = naive(kubeconfigs, args.secrets, "naive")
        naive_warm_s, naive_warm_req = naive(kubeconfigs, args.secrets, "naive")
    objects = args.clusters * args.secrets
    result = {
        "name": "sync-direct-real-apiservers",
        "delivery": "direct",
        "clusters": args.clusters,
        "secrets": args.secrets,
        "objects": objects,
        "vault_reads": 0,
        "cold_s": round(cold_s, 2),
        "cold_requests_per_cluster": cold["requests"] // args.clusters,
        "cold_writes": cold["writes"],
        "warm_s": round(warm_s, 2),
        "warm_requests_per_cluster": warm["requests"] // args.clusters,
        "warm_writes": warm["writes"],
        "peak_rss_mib": round(harness.peak_rss_mib(), 1),
        "baseline": {
            "name": "naive GET then create/replace per secret, typed client, sequential",
            "cold_s": round(naive_cold_s, 2),
            "warm_s": round(naive_warm_s, 2),
            "requests_per_cluster": naive_warm_req // args.clusters,
            "cold_requests_per_cluster": naive_cold_req // args.clusters,
        },
        "speedup": round(naive_cold_s / cold_s, 1),
        "warm_speedup": round(naive_warm_s / warm_s, 1),
        "simulated": False,
    }
    doc = {
        "machine": harness.machine(
            apiserver="kube-apiserver v1.20.2 (Debian source build), loopback, own etcd each"
        ),
        "results": [result],
    }
    harness.emit(doc, args.json)


if __name__ == "__main__":
    main()

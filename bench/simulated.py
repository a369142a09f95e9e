"""Sync at fleet scale against SIMULATED Kubernetes API servers — a simulation, not clusters.

Every number this benchmark prints is measured against in-process stand-ins for kube-apiserver
(tests/support/simulated.py: what they serve and what they do not), and every result it writes
says `"simulated": true`. For real API servers see bench/sync.py.

Here the simulated servers share the process (and its GIL) with the client under test, so
their CPU is reported beside the client's, and the peak RSS includes their stores.
`SimFleetProcess` serves the same servers from a process of their own (bench/run.py uses it).

    python bench/simulated.py [--clusters 100] [--secrets 1000] [--naive-sample 2]
        [--latency-ms 10] [--rate 50] [--burst 100] [--json FILE]

Measures, in one run on the same simulated fleet:
- secretsync `sync` cold (nothing there) and warm (nothing changed), through Engine + KubeSink
  with their defaults, as bench/sync.py does: wall time, requests and writes (KubeSink's
  counters and, separately, what reached the servers), 429s, peak RSS;
- the scripted baseline of bench/baselines.py (per cluster and Secret: GET, then create or
  replace, typed client, sequential) on the first `--naive-sample` clusters, cold and warm in
  its own namespace; its fleet time is extrapolated linearly (it visits clusters one after another)
  and labelled so.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import baselines
import harness
import sync
from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from secretsync.app import runtime
from secretsync.engine.cycle import Engine
from tests.support.simulated import JSONDoc, SimFleet, write_kubeconfig

KEY: Final = b"bench-sync-hmac-key"
NAMESPACE: Final = "bench"
NAIVE_NAMESPACE: Final = "naive"


# --- the fleet and the clients ---------------------------------------------------------------


def build_fleet(root: Path, kubeconfigs: Mapping[str, Path], secrets: int) -> None:
    """The same fleet as bench/sync.py: every FleetSecret on every cluster, 2 literal keys."""
    baselines.write_literal_fleet(
        root,
        kubeconfigs=kubeconfigs,
        labels={"env": "prod", "simulated": "true"},
        secrets=secrets,
        namespace=NAMESPACE,
    )


def run_sync(root: Path, sim: SimFleet) -> JSONDoc:
    """One `sync` cycle through Engine + KubeSink with their defaults (bench/sync.py's)."""
    cpu0, sim0 = time.process_time(), sim.cpu_s()
    report, sink, elapsed = sync.kube_cycle(root)
    cpu, sim_cpu = time.process_time() - cpu0, sim.cpu_s() - sim0
    reasons = Counter(i.reason or "" for i in report.failures)
    reasons.update(report.failed_clusters.values())
    return {
        "s": elapsed,
        "ok": report.ok,
        "requests": sink.requests,
        "writes": sink.writes,
        "failed_items": len(report.failures),
        "failed_clusters": len(report.failed_clusters),
        # reasons name a cluster, an object and an HTTP status: never a value
        "failure_reasons": [f"{n}x {r}" for r, n in reasons.most_common(5)],
        "process_cpu_s": round(cpu, 1),
        "sim_server_cpu_s": round(sim_cpu, 1),
    }


def naive(kubeconfigs: Sequence[Path], secrets: int, sim: SimFleet) -> JSONDoc:
    """The scripted baseline of bench/baselines.py (GET then create-or-replace, typed client,
    sequential) on the literal-only fleet, in its own namespace."""
    by_name = {path.stem: path for path in kubeconfigs}
    wanted = [
        item
        for name in by_name
        for item in baselines.literal_secrets(name, secrets, namespace=NAIVE_NAMESPACE)
    ]
    cpu0, sim0 = time.process_time(), sim.cpu_s()
    t0 = time.perf_counter()
    requests = baselines.scripted_direct(wanted, kubeconfig=by_name.__getitem__)
    elapsed = time.perf_counter() - t0
    return {
        "s": elapsed,
        "requests": requests,
        "process_cpu_s": round(time.process_time() - cpu0, 1),
        "sim_server_cpu_s": round(sim.cpu_s() - sim0, 1),
    }


def kubeconfigs_with_namespaces(sim: SimFleet, work: Path) -> dict[str, Path]:
    """A kubeconfig per started simulated server (under work/kubeconfigs), each server given
    the benchmark's namespaces through the typed client: {cluster name: kubeconfig}."""
    kubeconfigs = {
        c.name: write_kubeconfig(work / "kubeconfigs" / f"{c.name}.yaml", c) for c in sim.clusters
    }
    create_namespaces(list(kubeconfigs.values()))
    return kubeconfigs


def create_namespaces(kubeconfigs: Sequence[Path]) -> None:
    for path in kubeconfigs:
        api = baselines.typed_client(path)
        try:
            for namespace in (NAMESPACE, NAIVE_NAMESPACE):
                k8s.CoreV1Api(api).create_namespace(
                    k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace))
                )
        finally:
            baselines.close_client(api)


def _phase(run: JSONDoc, wire: JSONDoc, clusters: int) -> JSONDoc:
    return {
        "s": round(run["s"], 2),
        "ok": run["ok"],
        "requests_per_cluster": run["requests"] // clusters,
        # requests that reached the servers but not KubeSink's counter: urllib3 retries a
        # GET/PUT/DELETE answered 429 with Retry-After by itself, inside the worker thread
        "unseen_by_sink_per_cluster": round(
            wire["requests_per_cluster_mean"] - run["requests"] / clusters, 1
        ),
        "writes": run["writes"],
        "failed_items": run["failed_items"],
        "failed_clusters": run["failed_clusters"],
        "failure_reasons": run["failure_reasons"],
        "process_cpu_s": run["process_cpu_s"],
        "sim_server_cpu_s": run["sim_server_cpu_s"],
        "wire": wire,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument(
        "--naive-sample", type=int, default=2, help="clusters the naive client runs on"
    )
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s per cluster, 0: none")
    parser.add_argument("--burst", type=float, default=100.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.clusters < 1 or args.secrets < 1 or args.secrets > 10_000:
        parser.error("--clusters must be >= 1 and --secrets within 1..10000")
    sample = max(0, min(args.naive_sample, args.clusters))
    runtime.tune()
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="secretsync-bench-simulated-"))
    sim = SimFleet(
        args.clusters, latency_s=args.latency_ms / 1000, rate=args.rate, burst=args.burst
    )
    try:
        sim.start()
        kubeconfigs = kubeconfigs_with_namespaces(sim, work)
        root = work / "fleet"
        build_fleet(root, kubeconfigs, args.secrets)
        rss_before = harness.rss_mib()

        sim.new_phase()
        cold = _phase(run_sync(root, sim), sim.wire(), args.clusters)
        peak_cold = harness.peak_rss_mib()
        stored_after_cold, _ = sim.stored(NAMESPACE)
        sim.new_phase()
        warm = _phase(run_sync(root, sim), sim.wire(), args.clusters)
        peak = harness.peak_rss_mib()
        stored_after_warm, store_bytes = sim.stored(NAMESPACE)

        naive_doc: JSONDoc | None = None
        if sample:
            chosen = list(kubeconfigs.values())[:sample]
            sim.new_phase()
            naive_cold = naive(chosen, args.secrets, sim)
            naive_cold_wire = sim.wire(sim.clusters[:sample])
            sim.new_phase()
            naive_warm = naive(chosen, args.secrets, sim)
            naive_warm_wire = sim.wire(sim.clusters[:sample])
            scale = args.clusters / sample
            naive_doc = {
                "name": "naive GET then create/replace per secret, typed client, sequential",
                "sampled_clusters": sample,
                "extrapolated": sample < args.clusters,
                "extrapolation": (
                    f"measured on {sample} of {args.clusters} clusters, times x{scale:g} "
                    "(it visits clusters one after another)"
                ),
                "cold_s": round(naive_cold["s"] * scale, 1),
                "warm_s": round(naive_warm["s"] * scale, 1),
                "cold_s_measured": round(naive_cold["s"], 2),
                "warm_s_measured": round(naive_warm["s"], 2),
                "requests_per_cluster": naive_warm["requests"] // sample,
                "cold_requests_per_cluster": naive_cold["requests"] // sample,
                "cold_wire": naive_cold_wire,
                "warm_wire": naive_warm_wire,
                "cold_process_cpu_s": naive_cold["process_cpu_s"],
                "warm_process_cpu_s": naive_warm["process_cpu_s"],
                "simulated": True,
            }
    finally:
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)
    runtime_s = time.perf_counter() - t_start

    objects = args.clusters * args.secrets
    engine_defaults = Engine(sources={}, sinks=[], hmac_key=KEY, clock=lambda: datetime.now(UTC))
    per_cluster_cold = 2 * args.secrets + 1  # LIST + (GET + apply) per Secret
    concurrency = engine_defaults.cluster_concurrency
    floor_cluster = max(0.0, per_cluster_cold - args.burst) / args.rate if args.rate > 0 else 0.0
    result: JSONDoc = {
        "name": "sync-direct-simulated-apiservers",
        "simulated": True,
        "delivery": "direct",
        "clusters": args.clusters,
        "secrets": args.secrets,
        "objects": objects,
        "vault_reads": 0,
        "cold_s": cold["s"],
        "cold_requests_per_cluster": cold["requests_per_cluster"],
        "cold_writes": cold["writes"],
        "warm_s": warm["s"],
        "warm_requests_per_cluster": warm["requests_per_cluster"],
        "warm_writes": warm["writes"],
        "peak_rss_mib": round(peak, 1),  # the whole process: secretsync and the simulation
        "peak_rss_after_cold_mib": round(peak_cold, 1),
        "rss_before_sync_mib": round(rss_before, 1),
        "sim_store_mib": round(store_bytes / 2**20, 1),
        "stored_after_cold": stored_after_cold,
        "stored_after_warm": stored_after_warm,
        "cold": cold,
        "warm": warm,
        "rate_floor": {
            "per_cluster_s": round(floor_cluster, 1),
            "engine_cluster_concurrency": concurrency,
            "fleet_cold_s": round(math.ceil(args.clusters / concurrency) * floor_cluster, 1),
            "how": (
                "(2 x secrets + 1 - burst) / rate per cluster; clusters synced "
                f"{concurrency} at a time (Engine.cluster_concurrency)"
            ),
        },
        "simulation": {
            "latency_ms": args.latency_ms,
            "rate_per_s": args.rate,
            "burst": args.burst,
            "servers": "aiohttp, one app per cluster, one loop in one thread, same process",
        },
        "runtime_s": round(runtime_s, 1),
    }
    if naive_doc is not None:
        result["baseline"] = naive_doc
        result["speedup"] = round(naive_doc["cold_s"] / cold["s"], 1)
        result["warm_speedup"] = round(naive_doc["warm_s"] / warm["s"], 1)
    doc = {
        "simulated": True,
        "machine": harness.machine(
            load_avg_at_end=[round(x, 2) for x in harness.load_average()],
            apiserver="SIMULATED: in-process aiohttp stand-ins (tests/support/simulated.py)",
        ),
        "results": [result],
    }
    harness.emit(doc, args.json)


if __name__ == "__main__":
    main()

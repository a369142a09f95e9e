"""The `secretsync serve` daemon: webhook-to-fleet rotation latency, and the cost of idling.

Two scenarios, each against a real `python -m secretsync serve` subprocess on 127.0.0.1
(`--interval 600 --no-git --kube --no-leader-elect`, direct delivery; port read from its log):

    python bench/daemon.py --scenario latency [--clusters 3] [--rotations 30] [--simulated N]
        [--json FILE]
    python bench/daemon.py --scenario idle [--clusters 100] [--secrets 1000] [--idle-s 60]
        [--json FILE]

latency: a real OpenBao (tests/support/openbao.py) and N real kube-apiservers (tests/support/kubecluster.py),
or, with `--simulated N`, N SIMULATED API servers from tests/support/simulated.py (results say
`"simulated": true`). One FleetSecret reads one Vault path and goes to every cluster. For each
rotation: write a new value to OpenBao, POST a signed webhook (secretsync.daemon.webhook.sign), and
measure from the 202 until every cluster holds the new value (polled every 20 ms, 30 s
deadline); the next rotation starts once the webhook cycle is recorded in /v1/status.

idle: N SIMULATED API servers (tests/support/simulated.py, rate limit off by default so the cold start
cycle is short) and a literal-only fleet of M FleetSecrets on every cluster (no OpenBao). Once
the start cycle has finished, the daemon is left alone for `--idle-s` seconds while its
/proc/<pid>/stat utime+stime and /proc/<pid>/status VmRSS are sampled every second. The
simulated servers live in this process, not the daemon's: the daemon's numbers are its own.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402  (bench/harness.py)
import simulated as sim_mod  # noqa: E402  (bench/simulated.py)
from kubernetes import client as k8s  # noqa: E402

from secretsync.daemon import webhook  # noqa: E402
from tests.support.simulated import SECRETS, SimFleet  # noqa: E402

SECRET: Final = "rotated"
NAMESPACE: Final = sim_mod.NAMESPACE  # "bench"
VAULT_PATH: Final = "bench/daemon/rot"
POLL_S: Final = 0.02
JSONDoc = dict[str, Any]


# --- the daemon process ---------------------------------------------------------------------


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, key: bytes) -> None:
        self.proc, self.log, self.key = proc, log, key
        self.base = ""

    def request(
        self, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        # always http://127.0.0.1:<port> of the process this script started
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def status(self) -> JSONDoc:
        code, raw = self.request("/v1/status")
        assert code == 200, raw[:500]
        return json.loads(raw)

    def cycles_from_metrics(self) -> int:
        """Finished cycles, from /metrics (cheap at any fleet size, unlike /v1/status)."""
        code, raw = self.request("/metrics")
        assert code == 200
        total = 0.0
        for line in raw.decode().splitlines():
            if line.startswith("secretsync_cycles_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def post_webhook(self, paths: list[str]) -> int:
        body = json.dumps({"paths": paths}).encode()
        msg_id = f"msg_{uuid.uuid4().hex}"
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": webhook.sign(self.key, msg_id, stamp, body),
        }
        return self.request("/v1/webhooks/vault", body=body, headers=headers)[0]

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; log tail:\n{self.tail()}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.tail()}")
            time.sleep(POLL_S)
        return time.monotonic()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> float | None:
        """SIGTERM by PID; seconds to exit, or None if it had to be killed."""
        if self.proc.poll() is not None:
            return None
        started = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
            return round(time.monotonic() - started, 2)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            return None


@contextmanager
def serve(root: Path, work: Path, env_extra: Mapping[str, str]) -> Iterator[Daemon]:
    keys = {
        "SECRETSYNC_HMAC_KEY": f"bench-hmac-{uuid.uuid4().hex}",
        "SECRETSYNC_WEBHOOK_SECRET": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
    }
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "SECRETSYNC_LOG_LEVEL": "info",
        **keys,
        **env_extra,
    }
    log = work / "serve.log"
    argv = [
        sys.executable, "-m", "secretsync", "serve", str(root),
        "--listen", "127.0.0.1:0", "--interval", "600", "--no-git", "--kube",
        "--no-leader-elect", "--cluster-timeout", "300",
    ]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    daemon = Daemon(proc, log, webhook.parse_secret(keys["SECRETSYNC_WEBHOOK_SECRET"]))
    try:
        deadline = time.monotonic() + 60
        while True:
            found = re.search(
                r"listening on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace")
            )
            if found:
                daemon.base = f"http://127.0.0.1:{found.group(1)}"
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"serve did not start:\n{daemon.tail()}")
            time.sleep(POLL_S)
        yield daemon
    finally:
        daemon.stop()


# --- /proc sampling -------------------------------------------------------------------------

proc_cpu_s = harness.proc_cpu_s
proc_status_kib = harness.proc_status_kib


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# --- scenario 1: rotation latency -----------------------------------------------------------


def latency_fleet(root: Path, kubeconfigs: Mapping[str, Path], vault: str, simulated: bool) -> None:
    (root / "clusters").mkdir(parents=True)
    (root / "secrets").mkdir()
    (root / "secretsync.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench-daemon}\n"
        "spec:\n  defaults: {delivery: direct}\n"
        f"  sources: {{vault: {{address: '{vault}', auth: {{method: token}}}}}}\n"
    )
    sim_label = "true" if simulated else "false"
    (root / "clusters" / "all.yaml").write_text(
        "---\n".join(
            f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {name}, labels: {{env: prod, simulated: '{sim_label}'}}}}\n"
            f"spec: {{delivery: direct, kubeconfig: {{path: {path}}}}}\n"
            for name, path in kubeconfigs.items()
        )
    )
    (root / "secrets" / "all.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: {SECRET}}}\n"
        "spec:\n  clusterSelector: {matchLabels: {env: prod}}\n"
        f"  target: {{name: {SECRET}, namespace: {NAMESPACE}}}\n"
        f"  data: {{token: {{vault: {{path: {VAULT_PATH}, key: token}}}}}}\n"
    )


def real_reader(clusters: list[Any]) -> Callable[[], dict[str, str | None]]:
    import base64

    apis = {c.name: k8s.CoreV1Api(c.api_client()) for c in clusters}

    def read() -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for name, api in apis.items():
            try:
                obj = api.read_namespaced_secret(SECRET, NAMESPACE, _request_timeout=5)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise
                out[name] = None
                continue
            out[name] = base64.b64decode((obj.data or {}).get("token", "")).decode()
        return out

    return read


def sim_reader(sim: SimFleet) -> Callable[[], dict[str, str | None]]:
    import base64

    def collect() -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for c in sim.clusters:
            stored = c.objects[SECRETS.plural].get((NAMESPACE, SECRET))
            if stored is None:
                out[c.name] = None
                continue
            data = json.loads(stored.raw).get("data") or {}
            out[c.name] = base64.b64decode(data.get("token", "")).decode()
        return out

    return lambda: sim.call(collect)


def run_rotations(
    d: Daemon,
    bao: Any,
    read: Callable[[], dict[str, str | None]],
    rotations: int,
    first_value: str,
) -> JSONDoc:
    n_clusters = len(read())
    d.wait_for(lambda: d.request("/readyz")[0] == 200, timeout=120, what="/readyz 200")
    d.wait_for(
        lambda: all(v == first_value for v in read().values()),
        timeout=180,
        what="the first value on every cluster",
    )
    d.wait_for(lambda: d.status()["cycles"] >= 1, timeout=180, what="the start cycle")
    start_cycle = d.status()["lastCycle"]
    to_last: list[float] = []
    to_first: list[float] = []
    post_s: list[float] = []
    cycle_s: list[float] = []
    failures = 0
    for i in range(rotations):
        cycles = d.status()["cycles"]
        new = f"bench-rotation-{i}-{uuid.uuid4().hex[:8]}"
        bao.write_kv("secret", VAULT_PATH, {"token": new})
        t_post = time.monotonic()
        code = d.post_webhook([f"secret/data/{VAULT_PATH}"])
        accepted = time.monotonic()
        if code != 202:
            raise RuntimeError(f"webhook answered {code}")
        updated: dict[str, float] = {}

        def every_cluster(new: str = new, updated: dict[str, float] = updated) -> bool:
            now = time.monotonic()
            for name, value in read().items():
                if name not in updated and value == new:
                    updated[name] = now
            return len(updated) == n_clusters

        try:
            d.wait_for(every_cluster, timeout=30, what=f"rotation {i} on every cluster")
        except RuntimeError:
            failures += 1
            continue
        to_last.append(max(updated.values()) - accepted)
        to_first.append(min(updated.values()) - accepted)
        post_s.append(accepted - t_post)
        d.wait_for(lambda c=cycles: d.status()["cycles"] > c, timeout=30, what="webhook cycle")
        last = d.status()["lastCycle"]
        if last.get("trigger") == "webhook":
            cycle_s.append(float(last.get("durationSeconds", 0.0)))
        time.sleep(0.2)  # a gap between rotations

    def summary(values: list[float]) -> JSONDoc:
        if not values:
            return {}
        return {
            "p50_s": round(pct(values, 50), 3),
            "p95_s": round(pct(values, 95), 3),
            "p99_s": round(pct(values, 99), 3),
            "max_s": round(max(values), 3),
            "min_s": round(min(values), 3),
            "mean_s": round(statistics.fmean(values), 3),
        }

    return {
        "rotations": rotations,
        "completed": len(to_last),
        "timed_out": failures,
        "webhook_202_to_last_cluster": summary(to_last),
        "webhook_202_to_first_cluster": summary(to_first),
        "webhook_post_roundtrip": summary(post_s),
        "webhook_cycle_duration": summary(cycle_s),
        "start_cycle": {
            k: start_cycle.get(k) for k in ("durationSeconds", "trigger", "outcome", "counts")
        },
        "poll_interval_s": POLL_S,
        "samples_to_last_cluster_s": [round(v, 4) for v in to_last],
    }


def scenario_latency(args: argparse.Namespace, work: Path) -> JSONDoc:
    from tests.support.openbao import start_openbao

    bao = start_openbao()
    try:
        first = f"bench-first-{uuid.uuid4().hex[:8]}"
        bao.write_kv("secret", VAULT_PATH, {"token": first})
        env = {"VAULT_TOKEN": bao.root_token}
        root = work / "fleet"
        if args.simulated:
            sim = SimFleet(
                args.simulated,
                latency_s=args.latency_ms / 1000,
                rate=args.sim_rate,
                burst=args.sim_burst,
            )
            try:
                sim.start()
                kubeconfigs = sim_mod.kubeconfigs_with_namespaces(sim, work)
                latency_fleet(root, kubeconfigs, bao.address, simulated=True)
                with serve(root, work, env) as d:
                    doc = run_rotations(d, bao, sim_reader(sim), args.rotations, first)
                    doc["daemon_exit_s"] = d.stop()
            finally:
                sim.stop()
            doc |= {
                "name": "daemon-rotation-latency-simulated-apiservers",
                "simulated": True,
                "clusters": args.simulated,
                "simulation": {
                    "latency_ms": args.latency_ms,
                    "rate_per_s": args.sim_rate,
                    "burst": args.sim_burst,
                    "servers": "tests/support/simulated.py: aiohttp, one app per cluster, one loop, "
                    "in the benchmark process (not the daemon's)",
                },
            }
            return doc

        from tests.support.kubecluster import running_clusters

        names = [f"bench-d{i}" for i in range(args.clusters)]
        with running_clusters(names, workdir=work / "kube") as clusters:
            for c in clusters:
                with c.api_client() as api:
                    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
            kubeconfigs = {c.name: c.kubeconfig(work / f"{c.name}.yaml") for c in clusters}
            latency_fleet(root, kubeconfigs, bao.address, simulated=False)
            with serve(root, work, env) as d:
                doc = run_rotations(d, bao, real_reader(clusters), args.rotations, first)
                doc["daemon_exit_s"] = d.stop()
        doc |= {
            "name": "daemon-rotation-latency-real-apiservers",
            "simulated": False,
            "clusters": args.clusters,
        }
        return doc
    finally:
        bao.stop()


# --- scenario 2: idle cost ------------------------------------------------------------------


def scenario_idle(args: argparse.Namespace, work: Path) -> JSONDoc:
    sim = SimFleet(
        args.clusters, latency_s=args.latency_ms / 1000, rate=args.sim_rate, burst=args.sim_burst
    )
    try:
        sim.start()
        kubeconfigs = sim_mod.kubeconfigs_with_namespaces(sim, work)
        root = work / "fleet"
        sim_mod.build_fleet(root, kubeconfigs, args.secrets)
        with serve(root, work, {}) as d:
            pid = d.proc.pid
            t0 = time.monotonic()
            cpu_at_listen = proc_cpu_s(pid)
            rss_at_listen = proc_status_kib(pid, "VmRSS:")
            # poll the cheap /metrics while the start cycle runs: /v1/status lists every object
            d.wait_for(
                lambda: d.cycles_from_metrics() >= 1 or (time.sleep(1.0) or False),
                timeout=args.start_timeout,
                what="the start cycle",
            )
            ready_s = time.monotonic() - t0
            cpu_start_cycle = proc_cpu_s(pid) - cpu_at_listen
            st = d.status()
            last = st["lastCycle"]
            states = st.get("totals") or {}
            objects = len(st.get("objects") or [])
            del st
            hwm_after_start = proc_status_kib(pid, "VmHWM:")
            time.sleep(5.0)  # let the status request's garbage settle before measuring
            samples: list[tuple[float, float, int]] = []
            begin = time.monotonic()
            while True:
                now = time.monotonic()
                samples.append((now, proc_cpu_s(pid), proc_status_kib(pid, "VmRSS:")))
                if now - begin >= args.idle_s:
                    break
                time.sleep(1.0)
            hwm_end = proc_status_kib(pid, "VmHWM:")
            threads = proc_status_kib(pid, "Threads:")
            cycles_after = d.cycles_from_metrics()
            exit_s = d.stop()
    finally:
        sim.stop()
    wall = samples[-1][0] - samples[0][0]
    cpu = samples[-1][1] - samples[0][1]
    rss = [s[2] / 1024 for s in samples]
    per_10s = []
    for i in range(0, len(samples) - 10, 10):
        a, b = samples[i], samples[i + 10]
        per_10s.append(round(100 * (b[1] - a[1]) / (b[0] - a[0]), 2))
    return {
        "name": "daemon-idle-simulated-apiservers",
        "simulated": True,
        "clusters": args.clusters,
        "secrets": args.secrets,
        "objects": args.clusters * args.secrets,
        "objects_in_status": objects,
        "start_cycle": {
            "wall_s_from_listen": round(ready_s, 1),
            "durationSeconds": last.get("durationSeconds"),
            "trigger": last.get("trigger"),
            "outcome": last.get("outcome"),
            "counts": last.get("counts"),
            "daemon_cpu_s": round(cpu_start_cycle, 1),
            "vmhwm_mib": round(hwm_after_start / 1024, 1),
        },
        "totals": states,
        "idle": {
            "window_s": round(wall, 1),
            "samples": len(samples),
            "cpu_s": round(cpu, 2),
            "cpu_pct_of_one_core": round(100 * cpu / wall, 2) if wall else None,
            "cpu_pct_per_10s": per_10s,
            "clk_tck": harness.CLK_TCK,
            "rss_mib_min": round(min(rss), 1),
            "rss_mib_mean": round(statistics.fmean(rss), 1),
            "rss_mib_max": round(max(rss), 1),
            "rss_mib_at_listen": round(rss_at_listen / 1024, 1),
            "vmhwm_mib": round(hwm_end / 1024, 1),
            "threads": threads,
            "cycles_during_window": cycles_after - 1,
        },
        "daemon_exit_s": exit_s,
        "simulation": {
            "latency_ms": args.latency_ms,
            "rate_per_s": args.sim_rate,
            "burst": args.sim_burst,
            "servers": "tests/support/simulated.py: aiohttp, one app per cluster, one loop, in the "
            "benchmark process (not the daemon's: its CPU and RSS are not counted)",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--scenario", choices=("latency", "idle"), default="latency")
    parser.add_argument("--clusters", type=int, default=None, help="latency: 3, idle: 100")
    parser.add_argument("--rotations", type=int, default=30)
    parser.add_argument("--simulated", type=int, default=0, help="latency: N simulated clusters")
    parser.add_argument("--secrets", type=int, default=1000, help="idle: FleetSecrets")
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--start-timeout", type=float, default=480.0)
    parser.add_argument("--latency-ms", type=float, default=10.0, help="simulated RTT")
    parser.add_argument(
        "--sim-rate", type=float, default=None, help="simulated req/s per cluster (0: none)"
    )
    parser.add_argument("--sim-burst", type=float, default=100.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.clusters is None:
        args.clusters = 3 if args.scenario == "latency" else 100
    if args.sim_rate is None:  # idle: no limit, so the cold start cycle does not take minutes
        args.sim_rate = 50.0 if args.scenario == "latency" else 0.0
    work = Path(tempfile.mkdtemp(prefix=f"secretsync-bench-daemon-{args.scenario}-"))
    t0 = time.perf_counter()
    if args.scenario == "latency":
        result = scenario_latency(args, work)
    else:
        result = scenario_idle(args, work)
    result["runtime_s"] = round(time.perf_counter() - t0, 1)
    simulated = bool(result["simulated"])
    doc = {
        "simulated": simulated,
        "machine": harness.machine(
            load_avg_at_end=[round(x, 2) for x in harness.load_average()],
            apiserver=(
                "SIMULATED: in-process aiohttp stand-ins (tests/support/simulated.py)"
                if simulated
                else "kube-apiserver v1.20.2 (Debian source build), loopback, own etcd each"
            ),
            vault="OpenBao dev server, loopback" if args.scenario == "latency" else None,
        ),
        "results": [result],
    }
    with suppress(Exception):
        import shutil

        shutil.rmtree(work)
    harness.emit(doc, args.json)


if __name__ == "__main__":
    main()

"""One benchmark harness: secretsync against a scripted baseline, on the same data, in one run.

    python bench/run.py --scenario smoke [--json FILE]     # 10 clusters x 100 secrets, < 5 min
    python bench/run.py --scenario fleet [--json FILE]     # 100 clusters x 1,000 secrets
    python bench/run.py --scenario curve [--json FILE] [--chart bench/results/curve.png]

    --only sealed,external,direct   deliveries to measure (default: all three)
    --clusters N --secrets N        another size for smoke or fleet
    --curve-clusters 10,30,100,300  --curve-secrets 100,1000,10000   the curve's two axes
    --baseline-sample N             objects the baseline runs on before it is extrapolated
    --real-clusters N               also `direct` on N real kube-apiservers (tests/support/kubecluster.py)
    --cluster-concurrency N         Engine.cluster_concurrency (default: the Engine's own)
    --profile DIR                   run each secretsync pass under `py-spy record` (collapsed
                                    stacks per pass, for flamegraph.pl or speedscope)

What it starts: a real OpenBao dev server (tests/support/openbao.py) with KV v2 at `secret/`, reached
through tests/support/openbao.py's CountingProxy so Vault reads are counted on the wire; for `direct`,
one SIMULATED Kubernetes API server per cluster (tests/support/simulated.py: 10 ms per answer, 50
requests/s with a burst of 100 per cluster, 429 + Retry-After beyond), all served by a process
of their own so they do not share the measured client's GIL. Results against them say
`"simulated": true`.

The fleet: clusters `c000…` labelled `group: g0…g9` (cluster i in group i mod 10, at most as
many groups as clusters); FleetSecrets `s00000…`, each selecting every cluster, with two keys
from Vault and one literal:

    username: {vault: {path: 'apps/s00042/{{ cluster.labels.group }}', key: username}}
    password: {vault: {path: 'apps/s00042/{{ cluster.labels.group }}', key: password}}
    host:     {value: 's42.{{ cluster.name }}.example'}

so unique Vault paths = secrets x groups (fleet: 1,000 x 10 = 10,000) and every path is used
by clusters / groups clusters. Sealed clusters share 4 RSA-4096 certificates round robin (one
file per cluster); the fleet raises the Vault source's `requestsPerSecond` to `--vault-rps`
(5,000; the default 500 alone would take 20 s for 10,000 reads).

Each result: secretsync's cold pass (empty output / empty clusters) and warm pass (nothing
changed), each a fresh process running Engine + the delivery's sink (GitSink or KubeSink) as
the CLI does, timed from loading the fleet to the end of the cycle (interpreter start and
imports excluded), with its own peak RSS (VmHWM) and CPU; Vault reads on the wire; writes and
changed files (GitSink's counter and the output tree compared on disk; for `direct`, writes
that reached the servers); the scripted baseline of bench/baselines.py on a sample of objects,
extrapolated linearly (`extrapolated_from`); and a physical floor from unit costs measured in
the same run just before the result (raw RSA-OAEP encryptions, bare aiohttp reads, file
writes, the rate limit).

Checks (the exit status is 1 if one fails): Vault reads never above unique paths, a cold pass
without failures, and a warm pass with zero writes and zero changed files.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import harness

if TYPE_CHECKING:
    import baselines

    from tests.support.openbao import OpenBao
    from tests.support.simulated import SimFleetProcess

REPO: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

JSONDoc = dict[str, Any]
DELIVERIES: Final = ("sealed", "external", "direct")
MOUNT: Final = "secret"
GROUPS: Final = 10
NAMESPACES: Final = 10
CERTS: Final = 4
NAIVE_NAMESPACE: Final = "naive"
HMAC_KEY: Final = b"bench-run-hmac-key"
SECRETS_PER_FILE: Final = 250
# goals of the `fleet` scenario: cold pass per delivery, warm pass, peak RSS (BENCHMARKS.md)
GOAL_COLD_S: Final = {"direct": 45.0, "sealed": 30.0, "external": 15.0}
GOAL_WARM_S: Final = 5.0
GOAL_PEAK_RSS_MIB: Final = 256.0


# --- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    clusters: int
    secrets: int
    groups: int
    axis: str = ""  # the curve's axis: "clusters", "secrets" or "both"

    @property
    def unique_paths(self) -> int:
        return self.secrets * self.groups

    @property
    def objects(self) -> int:
        return self.clusters * self.secrets

    @property
    def label(self) -> str:
        return f"{self.clusters}x{self.secrets}"


def points(args: argparse.Namespace) -> list[Point]:
    if args.scenario in ("smoke", "fleet"):
        clusters = args.clusters or (10 if args.scenario == "smoke" else 100)
        secrets = args.secrets or (100 if args.scenario == "smoke" else 1000)
        return [Point(clusters=clusters, secrets=secrets, groups=min(GROUPS, clusters))]
    fixed_secrets, fixed_clusters = args.curve_fixed_secrets, args.curve_fixed_clusters
    out: dict[tuple[int, int], Point] = {}
    for c in args.curve_clusters:
        out[c, fixed_secrets] = Point(
            clusters=c, secrets=fixed_secrets, groups=_groups(c, fixed_secrets), axis="clusters"
        )
    for s in args.curve_secrets:
        axis = "both" if (fixed_clusters, s) in out else "secrets"
        out[fixed_clusters, s] = Point(
            clusters=fixed_clusters, secrets=s, groups=_groups(fixed_clusters, s), axis=axis
        )
    return sorted(out.values(), key=lambda p: p.objects)


def _groups(clusters: int, secrets: int) -> int:
    """Curve points keep unique paths at or below 10,000: groups = min(10, clusters, 10k/s)."""
    return max(1, min(GROUPS, clusters, 10_000 // secrets))


def vault_path(secret: int, group: int) -> str:
    return f"apps/s{secret:05d}/g{group}"


# --- the fleet repo ---------------------------------------------------------------------------


def build_fleet(
    root: Path,
    *,
    delivery: str,
    names: Sequence[str],
    point: Point,
    vault_address: str,
    vault_rps: float,
    certs: Sequence[bytes] = (),
    kubeconfigs: Mapping[str, Path] | None = None,
) -> None:
    for folder in ("clusters", "secrets", "certs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "secretsync.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench}\n"
        f"spec:\n  defaults: {{delivery: {delivery}}}\n  output: {{dir: rendered}}\n"
        "  sources:\n    vault:\n"
        f"      address: {vault_address}\n      kvMount: {MOUNT}\n      kvVersion: 2\n"
        "      auth: {method: token}\n"
        f"      limits: {{concurrency: 32, requestsPerSecond: {vault_rps:g}}}\n"
    )
    docs = []
    for i, name in enumerate(names):
        if delivery == "sealed":
            (root / "certs" / f"{name}.pem").write_bytes(certs[i % len(certs)])
            spec = f"{{delivery: sealed, sealedSecrets: {{certFile: certs/{name}.pem}}}}"
        elif delivery == "external":
            spec = "{delivery: external}"
        else:
            assert kubeconfigs is not None
            spec = f"{{delivery: direct, kubeconfig: {{path: {kubeconfigs[name]}}}}}"
        docs.append(
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {name}, labels: {{group: g{i % point.groups}}}}}\n"
            f"spec: {spec}\n"
        )
    (root / "clusters" / "all.yaml").write_text("---\n".join(docs))
    for start in range(0, point.secrets, SECRETS_PER_FILE):
        docs = []
        for s in range(start, min(start + SECRETS_PER_FILE, point.secrets)):
            path = f"apps/s{s:05d}/{{{{ cluster.labels.group }}}}"
            docs.append(
                "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
                f"metadata: {{name: s{s:05d}}}\n"
                "spec:\n  clusterSelector: {}\n"
                f"  target: {{name: s{s:05d}, namespace: ns{s % NAMESPACES}}}\n"
                "  data:\n"
                f"    username: {{vault: {{path: '{path}', key: username}}}}\n"
                f"    password: {{vault: {{path: '{path}', key: password}}}}\n"
                f"    host: {{value: 's{s}.{{{{ cluster.name }}}}.example'}}\n"
            )
        (root / "secrets" / f"s{start:05d}.yaml").write_text("---\n".join(docs))


def wanted(point: Point, names: Sequence[str], cluster: int, secret: int) -> baselines.Wanted:
    """What the fleet asks of cluster `cluster` for FleetSecret `secret`, for the baseline."""
    import baselines

    path = vault_path(secret, cluster % point.groups)
    name = names[cluster]
    return baselines.Wanted(
        cluster=name,
        namespace=f"ns{secret % NAMESPACES}",
        name=f"s{secret:05d}",
        refs={"username": (path, "username"), "password": (path, "password")},
        literals={"host": f"s{secret}.{name}.example"},
    )


# --- one secretsync pass, in a process of its own ---------------------------------------------


def cycle_main(spec_file: str, out_file: str) -> None:
    """The child: load the fleet and run one cycle through Engine + the delivery's sink."""
    from secretsync.app import runtime
    from secretsync.engine.cycle import Engine
    from secretsync.fleet import load
    from secretsync.sources.vault import build_vault_source

    spec = json.loads(Path(spec_file).read_text())
    runtime.tune()  # what the command line does at start
    root = Path(spec["root"])
    key = bytes.fromhex(spec["hmac_key"])
    cpu0, t0 = time.process_time(), time.perf_counter()
    fleet = load.load_fleet(root)
    load_s = time.perf_counter() - t0
    assert fleet.vault is not None
    source = build_vault_source(fleet.vault, env=dict(os.environ), root=fleet.root)
    sinks: list[Any] = []
    if spec["delivery"] == "direct":
        from secretsync.kube.clusters import ClientFactory
        from secretsync.sinks.kube.sink import KubeSink

        sinks.append(KubeSink(clients=ClientFactory(root=root), hmac_key=key))
    else:
        from secretsync.sinks.git.sink import GitSink

        sinks.append(GitSink(out_dir=root / fleet.output_dir, repo=root))
    knobs = (
        {"cluster_concurrency": spec["cluster_concurrency"]} if spec["cluster_concurrency"] else {}
    )
    engine = Engine(
        sources={"vault": source},
        sinks=sinks,
        hmac_key=key,
        clock=lambda: datetime.now(UTC),
        **knobs,
    )

    async def go() -> Any:
        try:
            return await engine.run_cycle(fleet)
        finally:
            await harness.close_any(source)
            for sink in sinks:
                await harness.close_any(sink)

    report = asyncio.run(go())
    wall = time.perf_counter() - t0
    sink = sinks[0]
    reasons = Counter(item.reason or "" for item in report.failures)
    reasons.update(report.failed_clusters.values())
    doc = {
        "s": wall,
        "load_s": load_s,
        "cpu_s": time.process_time() - cpu0,
        "ok": report.ok,
        "objects": len(report.items),
        "failed_items": len(report.failures),
        "failed_clusters": len(report.failed_clusters),
        # reasons name a cluster, an object and an HTTP status: never a value
        "failure_reasons": reasons.most_common(5),
        "reads": report.reads,
        "source_reads": source.counters.reads,
        "logins": source.counters.logins,
        "seals": report.seals,
        "writes": report.writes,
        "files_changed": getattr(sink, "files_changed", 0),
        "api_requests": getattr(sink, "requests", 0),
        "cluster_concurrency": engine.cluster_concurrency,
        "peak_rss_mib": harness.peak_rss_mib(),
    }
    Path(out_file).write_text(json.dumps(doc))


# --- services in this process -----------------------------------------------------------------


class WireCounter:
    """tests/support/openbao.py's CountingProxy in front of OpenBao, served by a thread of this process
    (its CPU is reported apart); every Vault request of secretsync and of the baseline passes
    through it."""

    def __init__(self, upstream: str) -> None:
        from tests.support.openbao import CountingProxy

        self.proxy = CountingProxy(upstream)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.__aenter__(), self._loop).result(30)

    @property
    def address(self) -> str:
        return self.proxy.address

    def mark(self) -> int:
        return len(self.proxy.seen)

    def reads_since(self, mark: int) -> int:
        prefix = f"/v1/{MOUNT}/data/"
        return sum(
            1 for s in self.proxy.seen[mark:] if s.method == "GET" and s.path.startswith(prefix)
        )

    def cpu_s(self) -> float:
        return harness.thread_cpu_s(self._thread.ident)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(
                self.proxy.__aexit__(None, None, None), self._loop
            ).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitCosts:
    """Physical unit costs measured in this run, on this machine, right now."""

    oaep_us: float  # one RSA-OAEP (SHA-256) encryption of a 32-byte key, RSA-4096
    read_wall_us: float  # one bare aiohttp GET of a KV v2 path, 32 in flight, wall per read
    read_cpu_us: float  # the client CPU of that GET
    file_write_us: float  # write a 2.5 KB file to a temp name and rename it
    file_read_us: float  # read it back
    cores: int

    def as_doc(self) -> JSONDoc:
        return {
            "raw_rsa_oaep_us": round(self.oaep_us, 1),
            "bare_aiohttp_read_wall_us": round(self.read_wall_us, 1),
            "bare_aiohttp_request_cpu_us": round(self.read_cpu_us, 1),
            "file_write_us": round(self.file_write_us, 1),
            "file_read_us": round(self.file_read_us, 1),
            "cores": self.cores,
        }


def measure_oaep_us(cert_pem: bytes, n: int = 1000) -> float:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return harness.raw_oaep_us(key, n)


async def measure_reads(address: str, token: str, paths: Sequence[str]) -> tuple[float, float]:
    """(wall µs per read, client CPU µs per read) of bare aiohttp GETs, 32 in flight."""
    import aiohttp

    gate = asyncio.Semaphore(32)
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(
        connector=connector, headers={"X-Vault-Token": token}
    ) as session:

        async def read(path: str) -> None:
            async with gate, session.get(f"{address}/v1/{MOUNT}/data/{path}") as response:
                json.loads(await response.read())

        await read(paths[0])  # the connection pool warmed
        gc.collect()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(read(p) for p in paths))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return wall / len(paths) * 1e6, cpu / len(paths) * 1e6


def measure_files(folder: Path, n: int = 2000) -> tuple[float, float]:
    """(µs to write + rename one 2.5 KB file, µs to read one), in fresh folders of 100."""
    payload = os.urandom(1900).hex()[:2500].encode()
    t0 = time.perf_counter()
    for i in range(n):
        target = folder / f"d{i // 100}"
        if i % 100 == 0:
            target.mkdir(parents=True)
        tmp = target / f".f{i}.tmp"
        tmp.write_bytes(payload)
        os.replace(tmp, target / f"f{i}.yaml")
    write_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for i in range(n):
        (folder / f"d{i // 100}" / f"f{i}.yaml").read_bytes()
    read_us = (time.perf_counter() - t0) / n * 1e6
    shutil.rmtree(folder)
    return write_us, read_us


# --- the run ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Run:
    args: argparse.Namespace
    work: Path
    bao: OpenBao
    token: str
    vault_address: str  # the proxy's, or OpenBao's with --count-reads source
    wire: WireCounter | None
    certs: list[bytes]
    populated: set[tuple[int, int]] = field(default_factory=set)
    costs: list[UnitCosts] = field(default_factory=list)
    checks_failed: list[str] = field(default_factory=list)

    # --- setup ---

    def populate(self, point: Point) -> None:
        todo = [
            (s, g)
            for s in range(point.secrets)
            for g in range(point.groups)
            if (s, g) not in self.populated
        ]
        if not todo:
            return
        t0 = time.perf_counter()
        asyncio.run(
            harness.write_kv(
                self.bao.address,
                self.bao.root_token,
                mount=MOUNT,
                secrets=(
                    (
                        vault_path(s, g),
                        {"username": f"svc-{s}-g{g}", "password": os.urandom(12).hex()},
                    )
                    for s, g in todo
                ),
            )
        )
        self.populated.update(todo)
        log(f"  OpenBao: wrote {len(todo):,} paths in {time.perf_counter() - t0:.1f} s")

    def unit_costs(self) -> UnitCosts:
        """Measured again before every result: a shared machine's load moves them."""
        known = [vault_path(s, g) for s, g in sorted(self.populated)[:2000]]
        paths = [known[i % len(known)] for i in range(2000)]  # a throughput, not a latency
        read_wall, read_cpu = asyncio.run(measure_reads(self.bao.address, self.token, paths))
        write_us, read_us = measure_files(self.work / "unit-files")
        costs = UnitCosts(
            oaep_us=measure_oaep_us(self.certs[0]),
            read_wall_us=read_wall,
            read_cpu_us=read_cpu,
            file_write_us=write_us,
            file_read_us=read_us,
            cores=os.cpu_count() or 1,
        )
        self.costs.append(costs)
        log(f"  unit costs: {costs.as_doc()}")
        return costs

    # --- one secretsync pass ---

    def secretsync_pass(
        self,
        root: Path,
        *,
        delivery: str,
        phase: str,
        sim: SimFleetProcess | None = None,
    ) -> tuple[JSONDoc, JSONDoc]:
        """(what the child reported, what was seen from outside: wire, CPU of the others)."""
        spec = root.parent / f"{phase}.spec.json"
        spec.write_text(
            json.dumps(
                {
                    "root": str(root),
                    "delivery": delivery,
                    "hmac_key": HMAC_KEY.hex(),
                    "cluster_concurrency": self.args.cluster_concurrency,
                }
            )
        )
        out = root.parent / f"{phase}.out.json"
        argv = harness.python_argv(Path(__file__), "_cycle", str(spec), str(out))
        if self.args.profile:
            self.args.profile.mkdir(parents=True, exist_ok=True)
            stacks = self.args.profile / f"{root.parent.name}-{phase}.txt"
            argv = [
                *(self.args.py_spy, "record", "--rate", "100", "--format", "raw"),
                *("-o", str(stacks), "--", *argv),
            ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.work),
            "VAULT_TOKEN": self.token,
            "PYTHONPATH": str(REPO),
        }
        if sim is not None:
            sim.new_phase()
        mark = self.wire.mark() if self.wire else 0
        bao0 = harness.proc_cpu_s(self.bao.pid)
        proxy0 = self.wire.cpu_s() if self.wire else 0.0
        sim0 = sim.cpu_s() if sim is not None else 0.0
        gc.collect()
        child = harness.run_child(argv, out=out, env=env, cwd=REPO)
        doc = child.doc
        seen: JSONDoc = {
            "vault_reads": self.wire.reads_since(mark) if self.wire else doc["source_reads"],
            "reads_counted": "wire" if self.wire else "VaultSource counter",
            "process_wall_s": round(child.wall_s, 2),
            "cpu_s": {
                "secretsync": round(doc["cpu_s"], 2),
                "openbao": round(harness.proc_cpu_s(self.bao.pid) - bao0, 2),
                "counting_proxy": round((self.wire.cpu_s() - proxy0) if self.wire else 0.0, 2),
            },
        }
        if sim is not None:
            seen["cpu_s"]["simulated_servers"] = round(sim.cpu_s() - sim0, 2)
            wire = sim.wire()
            seen["api"] = wire
            seen["api_writes"] = sum(
                n
                for call, n in wire["calls"].items()
                if call.split(" ")[0] in ("POST", "PUT", "PATCH", "DELETE")
            )
        return doc, seen

    # --- one result ---

    def measure(self, point: Point, delivery: str, *, name: str, real: int = 0) -> JSONDoc:
        self.populate(point)
        costs = self.unit_costs()
        base = self.work / f"{point.label}-{delivery}{'-real' if real else ''}"
        root = base / "fleet"
        with self._targets(point, delivery, base, real) as (names, kubeconfigs, sim):
            build_fleet(
                root,
                delivery=delivery,
                names=names,
                point=point,
                vault_address=self.vault_address,
                vault_rps=self.args.vault_rps,
                certs=self.certs,
                kubeconfigs=kubeconfigs,
            )
            log(f"  {name}: cold pass")
            cold, cold_seen = self.secretsync_pass(root, delivery=delivery, phase="cold", sim=sim)
            before = tree_state(root / "rendered")
            log(f"  {name}: cold {cold['s']:.2f} s; warm pass")
            warm, warm_seen = self.secretsync_pass(root, delivery=delivery, phase="warm", sim=sim)
            changed_on_disk = tree_changes(before, tree_state(root / "rendered"))
            log(f"  {name}: warm {warm['s']:.2f} s; baseline")
            baseline = self.baseline(
                point, delivery=delivery, names=names, kubeconfigs=kubeconfigs, base=base, sim=sim
            )
        return self.result(
            point,
            delivery,
            name=name,
            simulated=delivery == "direct" and not real,
            cold=cold,
            cold_seen=cold_seen,
            warm=warm,
            warm_seen=warm_seen,
            changed_on_disk=changed_on_disk,
            baseline=baseline,
            costs=costs,
        )

    @contextmanager
    def _targets(
        self, point: Point, delivery: str, base: Path, real: int
    ) -> Iterator[tuple[list[str], dict[str, Path], SimFleetProcess | None]]:
        """Cluster names, kubeconfigs and the simulated servers (direct only)."""
        if delivery != "direct":
            yield [f"c{i:03d}" for i in range(point.clusters)], {}, None
            return
        if real:
            with self._real_clusters(point, base) as (names, kubeconfigs):
                yield names, kubeconfigs, None
            return
        from tests.support.simulated import SimFleetProcess, write_kubeconfig

        sim = SimFleetProcess(
            point.clusters,
            latency_s=self.args.latency_ms / 1000,
            rate=self.args.rate,
            burst=self.args.burst,
        )
        try:
            sim.start()
            sim.ensure_namespaces([*(f"ns{i}" for i in range(NAMESPACES)), NAIVE_NAMESPACE])
            kubeconfigs = {
                e.name: write_kubeconfig(base / "kubeconfigs" / f"{e.name}.yaml", e)
                for e in sim.endpoints
            }
            yield [e.name for e in sim.endpoints], kubeconfigs, sim
        finally:
            sim.stop()

    @contextmanager
    def _real_clusters(
        self, point: Point, base: Path
    ) -> Iterator[tuple[list[str], dict[str, Path]]]:
        import baselines
        from kubernetes import client as k8s

        from tests.support.kubecluster import running_clusters

        names = [f"real-{i}" for i in range(point.clusters)]
        with running_clusters(names, workdir=base / "kube") as clusters:
            kubeconfigs = {c.name: c.kubeconfig(base / f"{c.name}.kubeconfig") for c in clusters}
            for path in kubeconfigs.values():
                api = baselines.typed_client(path)
                try:
                    for ns in [*(f"ns{i}" for i in range(NAMESPACES)), NAIVE_NAMESPACE]:
                        k8s.CoreV1Api(api).create_namespace(
                            k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns))
                        )
                finally:
                    baselines.close_client(api)
            yield names, kubeconfigs

    # --- the baseline ---

    def baseline(
        self,
        point: Point,
        *,
        delivery: str,
        names: Sequence[str],
        kubeconfigs: Mapping[str, Path],
        base: Path,
        sim: SimFleetProcess | None,
    ) -> JSONDoc:
        import baselines

        sample = max(1, self.args.baseline_sample)
        if delivery == "direct":
            # whole clusters, as the script visits them one after another; a cluster larger
            # than the sample is cut short (its burst then helps it: conservative)
            per_cluster = min(point.secrets, sample)
            clusters = min(point.clusters, max(1, sample // point.secrets))
            chosen = [
                wanted(point, names, c, s) for c in range(clusters) for s in range(per_cluster)
            ]
        else:
            n = min(sample, point.objects)
            chosen = [
                wanted(point, names, k % point.clusters, (k // point.clusters) % point.secrets)
                for k in range(n)
            ]
        reader = baselines.HvacReader(address=self.vault_address, token=self.token, mount=MOUNT)
        out_dir = base / "baseline-out"
        mark = self.wire.mark() if self.wire else 0
        if sim is not None:
            sim.new_phase()
        gc.collect()
        t0 = time.perf_counter()
        extra: JSONDoc = {}
        try:
            if delivery == "sealed":
                label = baselines.sealed_baseline_name()
                certs = base / "fleet" / "certs"
                extra["seals"] = baselines.scripted_sealed(
                    chosen, reader=reader, cert_file=lambda c: certs / f"{c}.pem", out_dir=out_dir
                )
            elif delivery == "external":
                label = baselines.EXTERNAL_BASELINE_NAME
                baselines.scripted_external(
                    chosen,
                    out_dir=out_dir,
                    store={"kind": "ClusterSecretStore", "name": "vault"},
                )
            else:
                label = baselines.DIRECT_BASELINE_NAME
                extra["api_requests"] = baselines.scripted_direct(
                    chosen,
                    kubeconfig=kubeconfigs.__getitem__,
                    reader=reader,
                    namespace=NAIVE_NAMESPACE,
                )
        finally:
            reader.close()
        measured = time.perf_counter() - t0
        shutil.rmtree(out_dir, ignore_errors=True)
        reads = self.wire.reads_since(mark) if self.wire else reader.reads
        scale = point.objects / len(chosen)
        return {
            "name": label,
            "cold_s": round(measured * scale, 2),
            "extrapolated_from": len(chosen),
            "measured_s": round(measured, 3),
            "per_object_ms": round(measured / len(chosen) * 1e3, 3),
            "vault_reads_measured": reads,
            "vault_reads_projected": round(reads * scale),
            **extra,
        }

    # --- the result and its floor ---

    def result(
        self,
        point: Point,
        delivery: str,
        *,
        name: str,
        simulated: bool,
        cold: JSONDoc,
        cold_seen: JSONDoc,
        warm: JSONDoc,
        warm_seen: JSONDoc,
        changed_on_disk: int,
        baseline: JSONDoc,
        costs: UnitCosts,
    ) -> JSONDoc:
        reads_needed = delivery != "external"
        warm_writes = warm["writes"]
        if "api_writes" in warm_seen:
            warm_writes = max(warm_writes, warm_seen["api_writes"])
        warm_changed = max(warm["files_changed"], changed_on_disk)
        floor = self.floor(
            point, delivery, cold, costs, reads_needed=reads_needed, rate_limited=simulated
        )
        cold_s, warm_s = round(cold["s"], 2), round(warm["s"], 2)
        result: JSONDoc = {
            "name": name,
            "delivery": delivery,
            "clusters": point.clusters,
            "secrets": point.secrets,
            "unique_paths": point.unique_paths,
            "vault_reads": cold_seen["vault_reads"],
            "cold_s": cold_s,
            "warm_s": warm_s,
            "warm_writes": warm_writes,
            "warm_changed_files": warm_changed,
            "peak_rss_mib": round(max(cold["peak_rss_mib"], warm["peak_rss_mib"]), 1),
            "baseline": baseline,
            "speedup": round(baseline["cold_s"] / cold["s"], 1),
            "simulated": simulated,
            "objects": point.objects,
            "groups": point.groups,
            "axis": point.axis or None,
            "warm_vault_reads": warm_seen["vault_reads"],
            "floor": floor,
            "cold_vs_floor": round(cold["s"] / floor["cold_s"], 2) if floor["cold_s"] else None,
            "warm_vs_floor": round(warm["s"] / floor["warm_s"], 2) if floor["warm_s"] else None,
            "cold": _pass_doc(cold, cold_seen),
            "warm": _pass_doc(warm, warm_seen) | {"changed_files_on_disk": changed_on_disk},
        }
        if delivery == "direct" and not simulated:
            result["api_servers"] = "real kube-apiservers (tests/support/kubecluster.py), loopback"
        if simulated:
            result["simulation"] = {
                "latency_ms": self.args.latency_ms,
                "rate_per_s": self.args.rate,
                "burst": self.args.burst,
                "servers": "tests/support/simulated.py, one aiohttp app per cluster, own process",
            }
        checks = {
            "vault_reads_within_unique_paths": cold_seen["vault_reads"] <= point.unique_paths
            and warm_seen["vault_reads"] <= point.unique_paths,
            "cold_without_failures": bool(cold["ok"]),
            "warm_zero_writes": warm_writes == 0,
            "warm_zero_changed_files": warm_changed == 0,
        }
        if not reads_needed:
            checks["external_reads_nothing"] = cold_seen["vault_reads"] == 0
        result["checks"] = checks
        for check, ok in checks.items():
            if not ok:
                self.checks_failed.append(f"{name}: {check}")
        if self.args.scenario == "fleet":
            goal_cold = GOAL_COLD_S[delivery]
            result["goals"] = {
                "cold_s": {"target": goal_cold, "met": cold["s"] <= goal_cold},
                "warm_s": {"target": GOAL_WARM_S, "met": warm["s"] <= GOAL_WARM_S},
                "peak_rss_mib": {
                    "target": GOAL_PEAK_RSS_MIB,
                    "met": result["peak_rss_mib"] <= GOAL_PEAK_RSS_MIB,
                },
                "vault_reads_equal_unique_paths": (
                    cold_seen["vault_reads"] == (point.unique_paths if reads_needed else 0)
                ),
            }
        return result

    def floor(
        self,
        point: Point,
        delivery: str,
        cold: JSONDoc,
        costs: UnitCosts,
        *,
        reads_needed: bool,
        rate_limited: bool,
    ) -> JSONDoc:
        """The physical floor from unit costs measured in this run (see the module doc). Real
        API servers have no rate limit of their own here: only the client CPU bounds them."""
        cores = costs.cores
        reads_s = point.unique_paths * costs.read_wall_us / 1e6 if reads_needed else 0.0
        parts: JSONDoc = {}
        if reads_needed:
            parts["vault_reads_s"] = round(reads_s, 3)
        if delivery == "direct":
            # one apply per Secret and one LIST per cluster, at `rate` after the burst; all
            # clusters at once. Client CPU: every request at the bare aiohttp cost, on all cores.
            per_cluster = point.secrets + 1
            rate_s = (
                max(0.0, per_cluster - self.args.burst) / self.args.rate
                if self.args.rate and rate_limited
                else 0.0
            )
            requests = point.objects + point.clusters + point.unique_paths
            cpu_s = requests * costs.read_cpu_us / cores / 1e6
            parts["rate_limit_s"] = round(rate_s, 3)
            parts["client_cpu_s"] = round(cpu_s, 3)
            cold_floor = reads_s + max(rate_s, cpu_s)
            warm_floor = reads_s + (self.args.latency_ms / 1000 if rate_limited else 0.0)
            how = (
                "unique paths x bare read + max((secrets + 1 - burst) / rate, "
                "(objects + clusters + reads) x bare request CPU / cores)"
            )
        else:
            files_s = point.objects * costs.file_write_us / cores / 1e6
            parts["file_writes_s"] = round(files_s, 3)
            cold_floor = reads_s + files_s
            if delivery == "sealed":
                seals = cold["seals"] or point.objects * 3
                seals_s = seals * costs.oaep_us / cores / 1e6
                parts["seals"] = seals
                parts["rsa_oaep_s"] = round(seals_s, 3)
                cold_floor += seals_s
            warm_floor = reads_s + point.objects * costs.file_read_us / cores / 1e6
            how = (
                "unique paths x bare read + seals x raw RSA-OAEP / cores + files x write / cores"
                if delivery == "sealed"
                else "files x write / cores (no Vault reads at render)"
            )
        return {
            "cold_s": round(cold_floor, 3),
            "warm_s": round(warm_floor, 3),
            "parts": parts,
            "how": how,
            "unit_costs": costs.as_doc(),
        }


def _pass_doc(doc: JSONDoc, seen: JSONDoc) -> JSONDoc:
    out = {
        "s": round(doc["s"], 2),
        "load_s": round(doc["load_s"], 2),
        "ok": doc["ok"],
        "failed_items": doc["failed_items"],
        "failed_clusters": doc["failed_clusters"],
        "failure_reasons": doc["failure_reasons"],
        "vault_reads": seen["vault_reads"],
        "reads_counted": seen["reads_counted"],
        "logins": doc["logins"],
        "seals": doc["seals"],
        "writes": doc["writes"],
        "files_changed": doc["files_changed"],
        "peak_rss_mib": round(doc["peak_rss_mib"], 1),
        "cpu_s": seen["cpu_s"],
        "process_wall_s": seen["process_wall_s"],
        "cluster_concurrency": doc["cluster_concurrency"],
    }
    if "api" in seen:
        out["api_requests_counted_by_sink"] = doc["api_requests"]
        out["api_writes_on_the_wire"] = seen["api_writes"]
        out["api"] = seen["api"]
    return out


def tree_state(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, inode) of every file below `folder`: enough to see a rewrite."""
    out: dict[str, tuple[int, int, int]] = {}
    if not folder.exists():
        return out
    for dirpath, _, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def tree_changes(before: Mapping[str, object], after: Mapping[str, object]) -> int:
    return sum(1 for path in before.keys() | after.keys() if before.get(path) != after.get(path))


# --- output -----------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(results: Iterable[JSONDoc]) -> str:
    head = (
        f"{'result':<28} {'clusters x secrets':>18} {'paths':>6} {'reads':>6} "
        f"{'cold s':>8} {'warm s':>7} {'w.wr':>4} {'w.ch':>4} {'MiB':>5} "
        f"{'baseline s':>10} {'speedup':>8} {'floor s':>8} {'x floor':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        sim = "*" if r["simulated"] else " "
        lines.append(
            f"{r['name'] + sim:<28} {r['clusters']:>8,} x {r['secrets']:>7,} "
            f"{r['unique_paths']:>6,} {r['vault_reads']:>6,} {r['cold_s']:>8.2f} "
            f"{r['warm_s']:>7.2f} {r['warm_writes']:>4} {r['warm_changed_files']:>4} "
            f"{r['peak_rss_mib']:>5.0f} {r['baseline']['cold_s']:>10.1f} "
            f"{r['speedup']:>7.1f}x {r['floor']['cold_s']:>8.2f} "
            f"{(r['cold_vs_floor'] or 0):>6.1f}x"
        )
    lines.append(
        "* simulated API servers. reads: Vault reads of the cold pass (on the wire); w.wr / "
        "w.ch: writes / changed files of the warm pass; baseline: extrapolated from a sample; "
        "x floor: cold time over the physical floor"
    )
    return "\n".join(lines)


def chart(results: Sequence[JSONDoc], path: Path, machine: JSONDoc) -> None:
    """Two panels: cold cost per cluster as clusters grow, cold cost per Secret as secrets grow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {"sealed": "tab:blue", "external": "tab:green", "direct": "tab:red"}
    for delivery in DELIVERIES:
        rows = [r for r in results if r["delivery"] == delivery]
        by_clusters = sorted(
            (r for r in rows if r["axis"] in ("clusters", "both")), key=lambda r: r["clusters"]
        )
        by_secrets = sorted(
            (r for r in rows if r["axis"] in ("secrets", "both")), key=lambda r: r["secrets"]
        )
        colour = colours[delivery]
        label = delivery + (" (simulated API)" if delivery == "direct" else "")
        if by_clusters:
            xs = [r["clusters"] for r in by_clusters]
            left.plot(
                xs, [r["cold_s"] / r["clusters"] for r in by_clusters], "o-", c=colour, label=label
            )
            left.plot(
                xs, [r["floor"]["cold_s"] / r["clusters"] for r in by_clusters], ":", c=colour
            )
            left.plot(
                xs,
                [r["baseline"]["cold_s"] / r["clusters"] for r in by_clusters],
                "x--",
                c=colour,
                alpha=0.5,
            )
        if by_secrets:
            xs = [r["secrets"] for r in by_secrets]
            right.plot(
                xs,
                [r["cold_s"] / r["objects"] * 1e3 for r in by_secrets],
                "o-",
                c=colour,
                label=label,
            )
            right.plot(
                xs, [r["floor"]["cold_s"] / r["objects"] * 1e3 for r in by_secrets], ":", c=colour
            )
            right.plot(
                xs,
                [r["baseline"]["cold_s"] / r["objects"] * 1e3 for r in by_secrets],
                "x--",
                c=colour,
                alpha=0.5,
            )
    fixed_s = next((r["secrets"] for r in results if r["axis"] == "clusters"), None)
    fixed_c = next((r["clusters"] for r in results if r["axis"] == "secrets"), None)
    left.set(
        xscale="log",
        yscale="log",
        xlabel="clusters",
        ylabel="cold seconds per cluster",
        title=f"cost per cluster ({fixed_s} secrets each)",
    )
    right.set(
        xscale="log",
        yscale="log",
        xlabel="secrets (FleetSecrets)",
        ylabel="cold ms per Secret delivered",
        title=f"cost per secret ({fixed_c} clusters)",
    )
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ticks = (
        sorted({r["clusters"] for r in results if r["axis"] in ("clusters", "both")}),
        sorted({r["secrets"] for r in results if r["axis"] in ("secrets", "both")}),
    )
    for ax, xs in zip((left, right), ticks, strict=True):
        ax.set_xticks(xs)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(
        "secretsync cold reconcile (o solid), physical floor (dotted), scripted baseline "
        f"(x dashed)\n{machine['cpus']} x {machine['cpu_model']}, Python {machine['python']}, "
        f"{machine['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--scenario", choices=("smoke", "fleet", "curve"), default="smoke")
    parser.add_argument("--json", type=Path, help="write the results document here")
    parser.add_argument("--only", default=",".join(DELIVERIES), help="deliveries, comma separated")
    parser.add_argument("--clusters", type=int, default=0, help="smoke/fleet: another size")
    parser.add_argument("--secrets", type=int, default=0, help="smoke/fleet: another size")
    parser.add_argument("--curve-clusters", type=_ints, default=[10, 30, 100, 300])
    parser.add_argument("--curve-secrets", type=_ints, default=[100, 1000, 10_000])
    parser.add_argument("--curve-fixed-secrets", type=int, default=100)
    parser.add_argument("--curve-fixed-clusters", type=int, default=10)
    parser.add_argument("--chart", type=Path, help="curve: the PNG (default: beside --json)")
    parser.add_argument("--baseline-sample", type=int, default=500, help="objects")
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s per cluster")
    parser.add_argument("--burst", type=float, default=100.0)
    parser.add_argument("--vault-rps", type=float, default=5000.0)
    parser.add_argument(
        "--cluster-concurrency", type=int, default=0, help="Engine's (default: its own)"
    )
    parser.add_argument(
        "--count-reads",
        choices=("wire", "source"),
        default="wire",
        help="wire: through tests/support/openbao.py's CountingProxy; source: VaultSource's counter",
    )
    parser.add_argument("--real-clusters", type=int, default=0, help="direct on real apiservers")
    parser.add_argument("--profile", type=Path, help="py-spy stacks of every secretsync pass")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    args.only = [d.strip() for d in args.only.split(",") if d.strip()]
    unknown = set(args.only) - set(DELIVERIES)
    if unknown or not args.only:
        parser.error(f"--only: choose from {', '.join(DELIVERIES)}")
    args.py_spy = py_spy()
    if args.profile and not args.py_spy:
        parser.error("--profile needs py-spy (pip install py-spy)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from tests.support.openbao import start_openbao

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="secretsync-bench-run-"))
    log(f"bench/run.py --scenario {args.scenario}: work folder {work}")
    bao = start_openbao()
    wire: WireCounter | None = None
    results: list[JSONDoc] = []
    run: Run | None = None
    try:
        client = bao.client()
        client.sys.create_or_update_policy(
            name="bench-read", policy=f'path "{MOUNT}/data/*" {{ capabilities = ["read"] }}'
        )
        token = client.auth.token.create(policies=["bench-read"], ttl="4h")["auth"]["client_token"]
        if args.count_reads == "wire":
            wire = WireCounter(bao.address)
            wire.start()
        log("  sealing keys: 4 x RSA-4096")
        run = Run(
            args=args,
            work=work,
            bao=bao,
            token=token,
            vault_address=wire.address if wire else bao.address,
            wire=wire,
            certs=[cert for _, cert in harness.sealing_keys(CERTS)],
        )
        for point in points(args):
            for delivery in args.only:
                name = f"{args.scenario}-{delivery}"
                if args.scenario == "curve":
                    name += f"-{point.label}"
                log(f"{name}: {point.clusters} clusters x {point.secrets} secrets")
                results.append(run.measure(point, delivery, name=name))
                log(table(results[-1:]).splitlines()[2])
            if args.real_clusters and "direct" in args.only and args.scenario != "curve":
                real = Point(
                    clusters=args.real_clusters,
                    secrets=point.secrets,
                    groups=min(point.groups, args.real_clusters),
                )
                name = f"{args.scenario}-direct-real"
                log(f"{name}: {real.clusters} real kube-apiservers x {real.secrets} secrets")
                results.append(run.measure(real, "direct", name=name, real=real.clusters))
    finally:
        if wire is not None:
            wire.stop()
        bao.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    machine = harness.machine(
        load_avg_at_end=[round(x, 2) for x in harness.load_average()],
        vault="OpenBao dev server (in memory), loopback, on the same cores",
    )
    doc: JSONDoc = {
        "machine": machine,
        "scenario": args.scenario,
        "runtime_s": round(time.perf_counter() - started, 1),
        "unit_costs": [c.as_doc() for c in run.costs] if run else [],
        "results": results,
    }
    print(table(results))
    failed = run.checks_failed if run else ["no run"]
    doc["checks_failed"] = failed
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if args.scenario == "curve" and results:
        png = args.chart or (args.json.parent / "curve.png" if args.json else None)
        if png is not None:
            chart(results, png, machine)
            log(f"chart: {png}")
    log(f"runtime {doc['runtime_s']:.0f} s")
    for line in failed:
        log(f"CHECK FAILED: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_cycle":
        cycle_main(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(main())

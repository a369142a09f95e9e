"""Network faults between secretsync and real kube-apiservers, through tests/support/faultproxy.py.

T2: a cluster behind a slow link (2 s added to every reply) does not hold up the others.
T8: the connection is reset after an apply reached the apiserver but before its reply came
back (an unknown outcome); the idempotent re-apply converges with at most two writes on the
wire and no duplicate side effects.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client as k8s

from secretsync.core.model import Cluster
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport
from secretsync.fleet import load
from secretsync.kube.clusters import ClientFactory
from secretsync.sinks.deliver import ApplyResult, ChangeSet
from secretsync.sinks.kube.sink import KubeSink
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import canary
from tests.support.fakes import FakeSource
from tests.support.faultproxy import FaultProxy
from tests.support.kubecluster import KubeCluster

KEY = b"kube-fault-hmac-key"
MakeRepo = Callable[[dict[str, str | bytes]], Path]
FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: faults}
spec:
  defaults: {delivery: direct}
"""


class TimedSink(KubeSink):
    """The real KubeSink, remembering when each cluster's apply finished."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.finished: dict[str, float] = {}

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult:
        result = await super().apply(cluster, changes)
        self.finished[cluster.name] = time.monotonic()
        return result


def proxied_kubeconfig(cluster: KubeCluster, path: Path, port: int | None) -> Path:
    """The cluster's admin kubeconfig, pointed at the proxy on `port` when one is given."""
    cluster.kubeconfig(path)
    if port is not None:
        doc = yaml.safe_load(path.read_text())
        doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
        path.write_text(yaml.safe_dump(doc))
    return path


def upstream(cluster: KubeCluster) -> tuple[str, int]:
    parts = urlsplit(cluster.server)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    return parts.hostname, parts.port


@pytest.fixture
def proxies(kube_clusters: list[KubeCluster]) -> Iterator[dict[str, FaultProxy]]:
    started = {c.name: FaultProxy(*upstream(c)).start() for c in kube_clusters}
    try:
        yield started
    finally:
        for p in started.values():
            p.stop()


def fleet_files(
    clusters: list[KubeCluster],
    ports: dict[str, int | None],
    tmp: Path,
    suffix: str,
    ns: str,
    *,
    count: int = 2,
) -> dict[str, str | bytes]:
    docs = [
        f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {c.name}-{suffix}, labels: {{env: prod}}}}\n"
        f"spec: {{kubeconfig: {{path: {proxied_kubeconfig(c, tmp / f'{c.name}-{suffix}.yaml', ports.get(c.name))}}}}}\n"
        for c in clusters
    ]
    secret_docs = "---\n".join(
        f"apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {{name: s{i}}}\n"
        f"spec:\n  clusterSelector: {{matchLabels: {{env: prod}}}}\n"
        f"  target: {{name: s{i}, namespace: {ns}}}\n"
        f"  data: {{v: {{vault: {{path: p{i}, key: v}}}}}}\n"
        for i in range(count)
    )
    return {
        "secretsync.yaml": FLEET,
        "clusters/all.yaml": "---\n".join(docs),
        "secrets/all.yaml": secret_docs,
    }


def run(
    root: Path,
    values: dict[str, dict[str, object]],
    *,
    max_attempts: int = 3,
    cluster_timeout_s: float = 60.0,
    concurrency: int = 8,
) -> tuple[CycleReport, TimedSink, float]:
    sink = TimedSink(
        clients=ClientFactory(root=root),
        hmac_key=KEY,
        request_timeout_s=10.0,
        max_attempts=max_attempts,
        backoff_s=0.1,
        concurrency=concurrency,
    )
    engine = Engine(
        sources={"vault": FakeSource(values)},
        sinks=[sink],
        hmac_key=KEY,
        clock=lambda: datetime.now(UTC),
        cluster_timeout_s=cluster_timeout_s,
    )
    started = time.monotonic()
    return (
        asyncio.run(engine.run_cycle(load.load_fleet(root))),
        sink,
        started,
    )  # pools close with the loop


def read(cluster: KubeCluster, namespace: str, name: str) -> k8s.V1Secret:
    with cluster.api_client() as api:
        return k8s.CoreV1Api(api).read_namespaced_secret(name, namespace)


def test_slow_cluster_does_not_hold_up_the_others(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    proxies: dict[str, FaultProxy],
    tmp_path: Path,
) -> None:
    """T2: every reply from one cluster is delayed 2 s; the others finish before any of the
    slow cluster's replies could have arrived, and the slow one still converges."""
    ns = kube_namespace()
    suffix = secrets.token_hex(3)
    slow = kube_clusters[2]
    ports: dict[str, int | None] = {c.name: proxies[c.name].port for c in kube_clusters}
    root = fleet_repo(fleet_files(kube_clusters, ports, tmp_path, suffix, ns))
    values: dict[str, dict[str, object]] = {f"p{i}": {"v": canary.new(f"t2-{i}")} for i in range(2)}
    latency = 2.0
    proxies[slow.name].latency_s = latency
    report, sink, started = run(root, values)
    assert report.ok, (report.failures, report.failed_clusters)
    assert report.writes == 2 * len(kube_clusters)
    fast_done = {
        name: sink.finished[f"{name}-{suffix}"] - started
        for name in (c.name for c in kube_clusters[:2])
    }
    slow_done = sink.finished[f"{slow.name}-{suffix}"] - started
    assert all(t < latency for t in fast_done.values()), (fast_done, slow_done)
    assert slow_done >= latency, "the latency fault was not in the path"
    assert sum(c.down for c in proxies[slow.name].connections) > 0
    for c in kube_clusters:
        for i in range(2):
            got = base64.b64decode(read(c, ns, f"s{i}").data["v"])
            assert got == str(values[f"p{i}"]["v"]).encode()


def test_cluster_timeout_counts_from_the_last_answer(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    proxies: dict[str, FaultProxy],
    tmp_path: Path,
) -> None:
    """A cluster that answers every request, slowly, takes longer in total than its timeout and
    still succeeds: the timeout is for silence, not for size. (A silent one fails within its
    timeout: test_accept_and_hang_cluster_fails_alone_within_its_timeout.)"""
    cluster = kube_clusters[0]
    ns = kube_namespace(cluster)
    suffix = secrets.token_hex(3)
    proxy = proxies[cluster.name]
    count = 8
    root = fleet_repo(
        fleet_files([cluster], {cluster.name: proxy.port}, tmp_path, suffix, ns, count=count)
    )
    values: dict[str, dict[str, object]] = {
        f"p{i}": {"v": canary.new(f"slow-{i}")} for i in range(count)
    }
    # the proxy delays every chunk it passes back, and one answer may come in several chunks
    # (the first also carries the TLS handshake): 0.4 s a chunk keeps the longest silence well
    # under the timeout, while one request at a time (list, name check, eight applies) takes
    # at least 4 s in all
    proxy.latency_s = 0.4
    timeout = 2.5
    report, _, started = run(root, values, cluster_timeout_s=timeout, concurrency=1)
    elapsed = time.monotonic() - started
    assert report.ok, (report.failures, report.failed_clusters)
    assert elapsed > timeout, "the slow link was not in the path"
    for i in range(count):
        assert (
            base64.b64decode(read(cluster, ns, f"s{i}").data["v"])
            == str(values[f"p{i}"]["v"]).encode()
        )


def test_reset_after_the_apply_was_sent_converges_with_at_most_two_writes(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    proxies: dict[str, FaultProxy],
    tmp_path: Path,
) -> None:
    """T8: the first apply reaches the apiserver, its reply is swallowed and the client reset.
    The re-apply (server-side apply, same content) converges; the object is written as wanted,
    no second object or foreign field manager appears, and the next cycle writes nothing."""
    cluster = kube_clusters[0]
    ns = kube_namespace(cluster)
    suffix = secrets.token_hex(3)
    proxy = proxies[cluster.name]
    root = fleet_repo(fleet_files([cluster], {cluster.name: proxy.port}, tmp_path, suffix, ns))
    pad = "p" * 24_000  # makes an apply (≈ 32 KB base64) stand out from reads (< 4 KB)
    values: dict[str, dict[str, object]] = {
        f"p{i}": {"v": canary.new(f"t8-{i}") + pad} for i in range(2)
    }
    threshold = 20_000
    proxy.reset_after(threshold, times=1)
    report, sink, _ = run(root, values)
    assert proxy.resets == 1, "the fault never fired"
    assert report.ok, (report.failures, report.failed_clusters)
    big = [c for c in proxy.connections if c.up >= threshold]
    # one apply per object, plus at most one re-send of the apply whose outcome was unknown
    assert len(big) <= 3, [c.up for c in proxy.connections]
    assert sink.writes == 2
    for i in range(2):
        obj = read(cluster, ns, f"s{i}")
        assert base64.b64decode(obj.data["v"]) == str(values[f"p{i}"]["v"]).encode()
        managers = {m.manager for m in obj.metadata.managed_fields or []}
        assert len(managers) == 1
    with cluster.api_client() as api:
        owned = k8s.CoreV1Api(api).list_namespaced_secret(
            ns, label_selector="app.kubernetes.io/managed-by=secretsync"
        )
    assert sorted(s.metadata.name for s in owned.items) == ["s0", "s1"]
    again, sink2, _ = run(root, values)
    assert again.ok and sink2.writes == 0
    assert {i.action for i in again.items} == {"unchanged"}


def test_accept_and_hang_cluster_fails_alone_within_its_timeout(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    proxies: dict[str, FaultProxy],
    tmp_path: Path,
) -> None:
    """T1 through the proxy: a cluster whose TCP connections are accepted and never answered
    fails on its own, within the request timeout budget; the others are delivered."""
    ns = kube_namespace()
    suffix = secrets.token_hex(3)
    hung = kube_clusters[1]
    ports: dict[str, int | None] = {c.name: proxies[c.name].port for c in kube_clusters}
    root = fleet_repo(fleet_files(kube_clusters, ports, tmp_path, suffix, ns))
    values: dict[str, dict[str, object]] = {f"p{i}": {"v": canary.new(f"t1-{i}")} for i in range(2)}
    proxies[hung.name].hang = True
    sink = TimedSink(
        clients=ClientFactory(root=root),
        hmac_key=KEY,
        request_timeout_s=1.0,
        max_attempts=2,
        backoff_s=0.1,
    )
    engine = Engine(
        sources={"vault": FakeSource(values)},
        sinks=[sink],
        hmac_key=KEY,
        clock=lambda: datetime.now(UTC),
        cluster_timeout_s=20.0,
    )
    started = time.monotonic()
    report = asyncio.run(engine.run_cycle(load.load_fleet(root)))  # pools close with the loop
    elapsed = time.monotonic() - started
    assert set(report.failed_clusters) == {f"{hung.name}-{suffix}"}
    assert elapsed < 15.0, elapsed
    assert len(proxies[hung.name].connections) >= 1
    for c in (kube_clusters[0], kube_clusters[2]):
        assert {f"s{i}" for i in range(2)} <= {
            s.metadata.name for s in k8s.CoreV1Api(c.api_client()).list_namespaced_secret(ns).items
        }
    proxies[hung.name].hang = False
    healed, _, _ = run(root, values)
    assert healed.ok, (healed.failures, healed.failed_clusters)


def foreign_edit(cluster: KubeCluster, ns: str) -> None:
    """Another field manager adds a key of its own and takes over one of ours."""
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s0", "namespace": ns},
        "data": {
            "theirs": base64.b64encode(b"kept").decode(),
            "v": base64.b64encode(b"overwritten by someone else").decode(),
        },
    }
    with cluster.api_client() as api:
        k8s.CoreV1Api(api).patch_namespaced_secret(
            "s0",
            ns,
            body,
            field_manager="someone-else",
            force=True,
            _content_type="application/apply-patch+yaml",
        )


def foreign_setup(
    fleet_repo: MakeRepo,
    cluster: KubeCluster,
    ns: str,
    tmp_path: Path,
) -> tuple[Path, dict[str, dict[str, object]]]:
    suffix = secrets.token_hex(3)
    root = fleet_repo(fleet_files([cluster], {cluster.name: None}, tmp_path, suffix, ns))
    values: dict[str, dict[str, object]] = {f"p{i}": {"v": canary.new(f"t3-{i}")} for i in range(2)}
    first, _, _ = run(root, values)
    assert first.ok
    foreign_edit(cluster, ns)
    return root, values


def test_foreign_field_manager_keys_survive_and_ours_are_restored(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> None:
    """T3: another field manager adds a key and changes one of ours. The next cycle restores
    ours with server-side apply (one write) and never removes the foreign key."""
    cluster = kube_clusters[0]
    ns = kube_namespace(cluster)
    root, values = foreign_setup(fleet_repo, cluster, ns, tmp_path)
    repaired, sink, _ = run(root, values)
    assert repaired.ok, (repaired.failures, repaired.failed_clusters)
    assert sink.writes == 1
    got = {k: base64.b64decode(v) for k, v in read(cluster, ns, "s0").data.items()}
    assert got == {"v": str(values["p0"]["v"]).encode(), "theirs": b"kept"}
    assert base64.b64decode(read(cluster, ns, "s1").data["v"]) == str(values["p1"]["v"]).encode()


def test_foreign_key_does_not_cause_a_write_every_cycle(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> None:
    """T3 / P3: after the repair, the object is settled: the next cycles write nothing."""
    cluster = kube_clusters[0]
    ns = kube_namespace(cluster)
    root, values = foreign_setup(fleet_repo, cluster, ns, tmp_path)
    repaired, _, _ = run(root, values)
    assert repaired.ok
    settled, sink, _ = run(root, values)
    assert settled.ok
    assert sink.writes == 0, "a foreign key must not cause a write every cycle"

"""Leader election and sharding on a real kube-apiserver (tests/MATRIX.md row P5).

Leases live in a fresh namespace of the first test cluster (`coordination.k8s.io/v1`, served
by 1.20). Durations are short (2-4 s leases); every wait is a poll of a condition with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from secretsync.core.model import Cluster, Fleet
from secretsync.daemon import webhook
from secretsync.daemon.service import Daemon
from secretsync.daemon.settings import DaemonSettings
from secretsync.daemon.sharding import (
    Coordinator,
    ElectionSettings,
    GatedSink,
    shard_lease,
    shard_of,
)
from secretsync.daemon.wiring import EngineWiring
from secretsync.engine.cycle import Engine
from secretsync.fleet.load import load_fleet
from secretsync.kube.clusters import Endpoint
from secretsync.kube.leases import LeaseElector, LeaseTiming
from secretsync.sinks.deliver import ApplyResult, ChangeSet, DelegatingSink, Sink
from secretsync.sinks.git.sink import GitSink
from secretsync.sources import resolve
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import canary
from tests.support.fakes import FakeSource
from tests.support.kubecluster import KubeCluster

FAST = LeaseTiming(lease_duration_s=2.0, renew_deadline_s=1.4, retry_period_s=0.2)
DAEMON = LeaseTiming(lease_duration_s=3.0, renew_deadline_s=2.0, retry_period_s=0.25)
SLOW_EXPIRY = LeaseTiming(lease_duration_s=4.0, renew_deadline_s=2.8, retry_period_s=0.2)
KEY = b"lease-test-hmac-key"
WEBHOOK_KEY = b"lease-test-webhook-key"


async def wait_for(cond: Callable[[], bool], *, timeout: float, what: str) -> float:
    """Poll `cond` until true; the seconds it took. Fails the test at the deadline."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"timed out after {timeout} s: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def lease_doc(api: Endpoint, namespace: str, name: str) -> dict[str, Any] | None:
    """The Lease as the API server holds it, read with the kubernetes client."""
    with k8s.ApiClient(api.configuration) as client:
        try:
            lease = k8s.CoordinationV1Api(client).read_namespaced_lease(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        doc: dict[str, Any] = client.sanitize_for_serialization(lease)
    return doc


def holder(api: Endpoint, namespace: str, name: str) -> str | None:
    doc = lease_doc(api, namespace, name)
    return None if doc is None else (doc.get("spec") or {}).get("holderIdentity")


@pytest.fixture
def lease_ns(kube_cluster: KubeCluster, kube_namespace: NamespaceFactory) -> str:
    return kube_namespace(kube_cluster, prefix="lease")


@pytest.fixture
def api(kube_cluster: KubeCluster) -> Any:
    return kube_cluster.endpoint()


def elector(
    api: Endpoint, ns: str, who: str, timing: LeaseTiming = FAST, name: str = "test-lease"
) -> LeaseElector:
    return LeaseElector(api=api, namespace=ns, name=name, identity=who, timing=timing)


@contextlib.asynccontextmanager
async def running(*electors: LeaseElector) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    tasks = {e.identity: asyncio.create_task(e.run()) for e in electors}
    try:
        yield tasks
    finally:
        for task in tasks.values():
            task.cancel()
        for task in tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- the elector ---------------------------------------------------------------------------------


async def test_two_electors_exactly_one_leads(api: Endpoint, lease_ns: str) -> None:
    a, b = elector(api, lease_ns, "a-1"), elector(api, lease_ns, "b-1")
    async with running(a, b):
        await wait_for(lambda: a.is_leader or b.is_leader, timeout=5, what="a leader")
        leader = a if a.is_leader else b
        # Watch over two lease durations: never two leaders, and the server agrees.
        end = time.monotonic() + 2 * FAST.lease_duration_s
        while time.monotonic() < end:
            assert not (a.is_leader and b.is_leader)
            await asyncio.sleep(0.05)
        assert leader.is_leader
        assert holder(api, lease_ns, "test-lease") == leader.identity
        doc = lease_doc(api, lease_ns, "test-lease")
        assert doc is not None and doc["spec"]["leaseDurationSeconds"] == 2


async def test_killed_leader_is_replaced_after_expiry(api: Endpoint, lease_ns: str) -> None:
    a, b = elector(api, lease_ns, "a-2"), elector(api, lease_ns, "b-2")
    async with running(a) as tasks:
        await wait_for(lambda: a.is_leader, timeout=5, what="a leads")
        async with running(b):
            # b has had a few tries and did not take a live Lease
            await wait_for(lambda: b.attempts >= 3, timeout=3, what="b tries")
            assert not b.is_leader and holder(api, lease_ns, "test-lease") == "a-2"
            tasks["a-2"].cancel()  # a dies: no release, no more renewals
            with contextlib.suppress(asyncio.CancelledError):
                await tasks["a-2"]
            took = await wait_for(lambda: b.is_leader, timeout=5, what="b takes over")
            # not before the Lease expired (a renewed at most one retry period before dying)...
            assert took >= FAST.lease_duration_s - FAST.retry_period_s - 0.3, took
            # ...and within the lease duration plus one retry (and some slack for a busy host)
            assert took <= FAST.lease_duration_s + FAST.retry_period_s + 1.0, took
            assert holder(api, lease_ns, "test-lease") == "b-2"
            doc = lease_doc(api, lease_ns, "test-lease")
            assert doc is not None and doc["spec"]["leaseTransitions"] == 1


async def test_leader_that_cannot_renew_steps_down_before_expiry(
    kube_cluster: KubeCluster, api: Endpoint, lease_ns: str
) -> None:
    """A renew that fails (here: 403, a credential revoked) past the renew deadline ends
    leadership locally before anyone else may take the Lease: never two leaders."""
    a, b = elector(api, lease_ns, "a-3"), elector(api, lease_ns, "b-3")
    async with running(a):
        await wait_for(lambda: a.is_leader, timeout=5, what="a leads")
        async with running(b):
            a.api = kube_cluster.endpoint(user="unprivileged")
            stepped_down: float | None = None
            b_led: float | None = None
            start = time.monotonic()
            while b_led is None:
                assert time.monotonic() - start < 6, "b never took over"
                assert not (a.is_leader and b.is_leader), "two leaders"
                if stepped_down is None and not a.is_leader:
                    stepped_down = time.monotonic() - start
                if b.is_leader:
                    b_led = time.monotonic() - start
                await asyncio.sleep(0.01)
            assert stepped_down is not None and stepped_down <= FAST.renew_deadline_s + 0.1
            assert stepped_down < b_led


async def test_graceful_release_hands_over_at_once(api: Endpoint, lease_ns: str) -> None:
    a, b = elector(api, lease_ns, "a-4", SLOW_EXPIRY), elector(api, lease_ns, "b-4", SLOW_EXPIRY)
    async with running(a) as tasks:
        await wait_for(lambda: a.is_leader, timeout=5, what="a leads")
        async with running(b):
            await wait_for(lambda: b.attempts >= 2, timeout=3, what="b tries")
            assert not b.is_leader
            a.stop()
            await tasks["a-4"]
            await a.release()
            assert not a.is_leader
            assert holder(api, lease_ns, "test-lease") is None
            took = await wait_for(lambda: b.is_leader, timeout=3, what="b takes over")
            # far sooner than expiry: the next retry
            assert took < SLOW_EXPIRY.lease_duration_s / 2, took


class Racing(LeaseElector):
    """An elector whose read waits at a barrier, so two of them write on the same state."""

    barrier: ClassVar[asyncio.Barrier]

    async def _read(self) -> Any:
        seen = await super()._read()
        await self.barrier.wait()
        return seen


@pytest.mark.parametrize("start", ["absent", "expired"])
async def test_a_409_race_has_one_winner(api: Endpoint, lease_ns: str, start: str) -> None:
    name = f"race-{start}"
    if start == "expired":
        old = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name},
            "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 2, "renewTime": old},
        }
        status, _, _ = await api.request(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{lease_ns}/leases", body=body
        )
        assert status == 201
    Racing.barrier = asyncio.Barrier(2)
    a = Racing(api=api, namespace=lease_ns, name=name, identity="a-5", timing=FAST)
    b = Racing(api=api, namespace=lease_ns, name=name, identity="b-5", timing=FAST)
    won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(won) == [False, True]
    assert a.conflicts + b.conflicts == 1
    winner = a if won[0] else b
    assert [e.is_leader for e in (a, b)] == list(won)
    assert holder(api, lease_ns, name) == winner.identity


# --- two daemons (P5) ------------------------------------------------------------------------


@dataclass
class Write:
    replica: str
    cluster: str
    start: float
    end: float
    objects: int


class Recording(DelegatingSink):
    """Outermost sink wrapper: records every write (with changes) a replica makes."""

    def __init__(self, inner: Sink, *, replica: str, log: list[Write]) -> None:
        super().__init__(inner)
        self.replica = replica
        self.log = log

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult:
        start = time.monotonic()
        result = await self.inner.apply(cluster, changes)
        n = len(changes.create) + len(changes.update) + len(changes.delete)
        if n:
            self.log.append(Write(self.replica, cluster.name, start, time.monotonic(), n))
        return result


class RecordingWiring(EngineWiring):
    """The daemon's own wiring (real KubeSinks, gated by the coordinator), recorded."""

    def __init__(self, *, replica: str, log: list[Write], **kw: Any) -> None:
        super().__init__(**kw)
        self.replica = replica
        self.log = log

    async def engine_for(self, fleet: Fleet) -> Engine:
        engine = await super().engine_for(fleet)
        if not all(isinstance(s, Recording) for s in engine.sinks):
            engine.sinks = [Recording(s, replica=self.replica, log=self.log) for s in engine.sinks]
        return engine


FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: lease-test}
spec:
  defaults: {delivery: direct}
"""

SECRETS = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: db}
spec:
  clusterSelector: {}
  target: {name: db, namespace: NAMESPACE}
  data:
    password: {vault: {path: db, key: password}}
---
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: api}
spec:
  clusterSelector: {}
  target: {name: api, namespace: NAMESPACE}
  data:
    token: {vault: {path: api, key: token}}
"""


class Replica:
    def __init__(
        self,
        who: str,
        *,
        root: Path,
        home: Endpoint,
        election: ElectionSettings,
        values: dict[str, dict[str, object]],
        log: list[Write],
        port: int = 0,
        peers: tuple[str, ...] = (),
    ) -> None:
        self.who = who
        settings = DaemonSettings(
            fleet_path=root,
            hmac_key=KEY,
            port=port,
            webhook_key=WEBHOOK_KEY,
            peers=peers,
            interval_s=3600,
            git=False,
            kube=True,
            cluster_timeout_s=20,
            grace_s=10,
            election=election,
        )
        self.coordinator = Coordinator(api=home, settings=election)

        def sources(fleet: Fleet, env: Mapping[str, str]) -> Mapping[str, resolve.Source]:
            return {"vault": FakeSource(values)}  # type: ignore[arg-type]

        wiring = RecordingWiring(
            replica=who,
            log=log,
            settings=settings,
            make_sources=sources,
            report=lambda _source, _error: None,
            gate=self.coordinator,
        )
        self.daemon = Daemon(settings=settings, wiring=wiring, coordinator=self.coordinator)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.daemon.serve())

    async def stop(self) -> None:
        self.daemon.stop()
        if self.task is not None:
            await self.task


def secret_value(cluster: KubeCluster, ns: str, name: str, key: str) -> bytes | None:
    with cluster.api_client() as client:
        try:
            obj = k8s.CoreV1Api(client).read_namespaced_secret(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
    raw = (obj.data or {}).get(key)
    return None if raw is None else base64.b64decode(raw)


def fleet_files(
    clusters: list[KubeCluster], names: list[str], ns: str, tmp: Path
) -> dict[str, str | bytes]:
    docs = []
    for c, name in zip(clusters, names, strict=True):
        kubeconfig = c.kubeconfig(tmp / f"{name}.yaml")
        docs.append(
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {name}}}\nspec:\n  kubeconfig: {{path: {kubeconfig}}}\n"
        )
    return {
        "secretsync.yaml": FLEET,
        "clusters/all.yaml": "---\n".join(docs),
        "secrets/all.yaml": SECRETS.replace("NAMESPACE", ns),
    }


def assert_no_overlap(log: list[Write]) -> None:
    """No cluster is ever written by two replicas at the same time."""
    for i, w in enumerate(log):
        for v in log[i + 1 :]:
            if w.cluster == v.cluster and w.replica != v.replica:
                assert w.end <= v.start or v.end <= w.start, (w, v)


@dataclass
class P5:
    """What each two-replica test starts from: a fleet of the test clusters (under `names`)
    delivering to namespace `ns`, the values its fake Vault serves, the log of writes, and one
    home-cluster connection per replica (Leases in `lease_ns`)."""

    ns: str
    lease_ns: str
    names: list[str]
    root: Path
    values: dict[str, dict[str, object]]
    log: list[Write]
    homes: list[Endpoint]


@pytest.fixture
def p5(
    fleet_repo: Callable[[dict[str, str | bytes]], Path],
    kube_clusters: list[KubeCluster],
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> Callable[[list[str]], P5]:
    def make(names: list[str]) -> P5:
        ns = kube_namespace()
        lease_ns = kube_namespace(kube_cluster, prefix="lease")
        return P5(
            ns=ns,
            lease_ns=lease_ns,
            names=names,
            root=fleet_repo(fleet_files(kube_clusters, names, ns, tmp_path)),
            values={"db": {"password": canary.new("db")}, "api": {"token": canary.new("api")}},
            log=[],
            homes=[kube_cluster.endpoint(), kube_cluster.endpoint()],
        )

    return make


@contextlib.asynccontextmanager
async def serving(replicas: list[Replica], homes: list[Endpoint]) -> AsyncIterator[None]:
    """The replicas started; at the end stopped (whatever the test left running) and the home
    connections closed."""
    try:
        for r in replicas:
            r.start()
        yield
    finally:
        for r in replicas:
            with contextlib.suppress(Exception):
                await r.stop()
        for home in homes:
            await home.aclose()


async def test_two_replicas_one_writer_and_takeover(
    p5: Callable[[list[str]], P5], kube_clusters: list[KubeCluster]
) -> None:
    """P5 with one shard: two replicas contend; only the holder writes, each object once; the
    holder dies without releasing, the other takes over within the lease duration; a graceful
    stop hands over at once."""
    suffix = secrets.token_hex(3)
    setting = p5([f"{c.name}-{suffix}" for c in kube_clusters])
    values, log = setting.values, setting.log
    replicas = [
        Replica(
            who,
            root=setting.root,
            home=home,
            election=ElectionSettings(namespace=setting.lease_ns, identity=who, timing=DAEMON),
            values=values,
            log=log,
        )
        for who, home in zip(("r1", "r2"), setting.homes, strict=True)
    ]
    async with serving(replicas, setting.homes):
        await wait_for(lambda: len(log) == 3, timeout=20, what="the leader writes 3 clusters")
        writers = {w.replica for w in log}
        assert len(writers) == 1 and sum(w.objects for w in log) == 6  # each object once
        leader = next(r for r in replicas if r.who in writers)
        other = next(r for r in replicas if r is not leader)
        assert leader.coordinator.shard.is_leader
        assert not other.coordinator.shard.is_leader
        assert leader.coordinator.git.is_leader != other.coordinator.git.is_leader
        status = leader.daemon.board.document()["leadership"]
        assert status["leases"]["secretsync-shard-0"] is True
        assert status["clusters"] == sorted(setting.names)
        assert other.daemon.board.document()["leadership"]["leases"][shard_lease(0)] is False
        assert (
            leader.daemon.metrics.registry.get_sample_value(
                "secretsync_leader", {"lease": shard_lease(0)}
            )
            == 1
        )
        assert (
            other.daemon.metrics.registry.get_sample_value(
                "secretsync_leader", {"lease": shard_lease(0)}
            )
            == 0
        )
        for c in kube_clusters:
            assert (
                secret_value(c, setting.ns, "db", "password")
                == str(values["db"]["password"]).encode()
            )

        # a rotation reaches both replicas: only the holder writes, once per object
        values["db"]["password"] = canary.new("db2")  # FakeSource shares the inner dicts
        assert leader.daemon.submit(("secret/db",)) == (1, 0)
        assert other.daemon.submit(("secret/db",)) == (1, 0)
        await wait_for(lambda: len(log) == 6, timeout=20, what="the rotation is written")
        assert {w.replica for w in log[3:]} == {leader.who}

        # the holder dies (its Leases are not released): the other takes over after expiry
        cycles = other.daemon.board.cycles
        await leader.coordinator.stop(release=False)
        t0 = time.monotonic()
        took = await wait_for(
            lambda: other.coordinator.shard.is_leader, timeout=10, what="takeover"
        )
        assert took <= DAEMON.lease_duration_s + DAEMON.retry_period_s + 1.5, took
        # taking over starts a full cycle: nothing changed, nothing is written (P3)
        await wait_for(
            lambda: other.daemon.board.cycles > cycles, timeout=10, what="the new leader's cycle"
        )
        assert len(log) == 6
        values["api"]["token"] = canary.new("api2")
        for r in replicas:
            r.daemon.submit(("secret/api",))
        await wait_for(lambda: len(log) == 9, timeout=20, what="the new leader writes")
        assert {w.replica for w in log[6:]} == {other.who}
        assert time.monotonic() - t0 < 30
        for c in kube_clusters:
            assert (
                secret_value(c, setting.ns, "api", "token") == str(values["api"]["token"]).encode()
            )
        assert_no_overlap(log)

        # a graceful stop of the new holder releases its Leases at once
        await other.stop()
        assert holder(setting.homes[0], setting.lease_ns, shard_lease(0)) is None


def names_in_both_shards(clusters: list[KubeCluster]) -> list[str]:
    """Cluster names (one per apiserver, a fresh suffix) that fall into both of two shards."""
    while True:
        suffix = secrets.token_hex(3)
        names = [f"{c.name}-{suffix}" for c in clusters]
        if {shard_of(n, 2) for n in names} == {0, 1}:
            return names


def two_shards(setting: P5, *, ports: list[int] | None = None) -> list[Replica]:
    """Replicas s0 and s1 of two shards; with `ports`, each names the other as its peer."""
    return [
        Replica(
            f"s{i}",
            root=setting.root,
            home=setting.homes[i],
            election=ElectionSettings(
                shards=2,
                shard_index=i,
                namespace=setting.lease_ns,
                identity=f"s{i}",
                timing=DAEMON,
            ),
            values=setting.values,
            log=setting.log,
            port=ports[i] if ports else 0,
            peers=(f"http://127.0.0.1:{ports[1 - i]}",) if ports else (),
        )
        for i in range(2)
    ]


async def test_two_shards_split_the_clusters(
    p5: Callable[[list[str]], P5], kube_clusters: list[KubeCluster]
) -> None:
    """P5 with two shards: each replica writes only its own shard's clusters; together all."""
    setting = p5(names_in_both_shards(kube_clusters))
    values, log = setting.values, setting.log
    replicas = two_shards(setting)
    async with serving(replicas, setting.homes):
        await wait_for(
            lambda: len(log) == 3 and all(r.daemon.board.cycles for r in replicas),
            timeout=20,
            what="3 clusters written, each replica's cycle recorded",
        )
        # the start cycle waited for the first election round, so it is the one that wrote:
        # no cycle ran while a replica held only some of its Leases
        for r in replicas:
            doc = r.daemon.board.document()
            assert doc["cycles"] == 1 and doc["lastCycle"]["trigger"] == "start", doc["lastCycle"]
        for w in log:
            assert w.replica == f"s{shard_of(w.cluster, 2)}", w
            assert w.objects == 2
        assert {w.cluster for w in log} == set(setting.names)
        for i, r in enumerate(replicas):
            doc = r.daemon.board.document()["leadership"]
            assert doc["shardIndex"] == i and doc["leases"][shard_lease(i)] is True
            assert doc["clusters"] == sorted(n for n in setting.names if shard_of(n, 2) == i)
        # exactly one of them holds the Git Lease (and still only writes its own shard)
        assert sum(r.coordinator.git.is_leader for r in replicas) == 1
        for c in kube_clusters:
            assert (
                secret_value(c, setting.ns, "api", "token") == str(values["api"]["token"]).encode()
            )
        assert_no_overlap(log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_webhook_to_one_shard_reaches_the_clusters_of_both(
    p5: Callable[[list[str]], P5], kube_clusters: list[KubeCluster]
) -> None:
    """Two shards naming each other with `--peer`: a rotation webhook sent to shard 0 only is
    forwarded, and every cluster of both shards holds the new value within 5 s, each written by
    its own shard's replica."""
    setting = p5(names_in_both_shards(kube_clusters))
    values, log = setting.values, setting.log
    ports = [_free_port(), _free_port()]
    replicas = two_shards(setting, ports=ports)
    async with serving(replicas, setting.homes):
        await wait_for(lambda: len(log) == 3, timeout=20, what="the start cycles' 3 writes")
        values["api"]["token"] = rotated = canary.new("api-rotated")
        body = json.dumps({"paths": ["secret/api"]}).encode()
        stamp = int(time.time())
        headers = {
            "webhook-id": "msg_rotation",
            "webhook-timestamp": str(stamp),
            "webhook-signature": webhook.sign(WEBHOOK_KEY, "msg_rotation", stamp, body),
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{ports[0]}/v1/webhooks/vault", data=body, headers=headers
            ) as answer,
        ):
            assert answer.status == 202, await answer.text()
            assert (await answer.json())["queued"] == 1
        await wait_for(
            lambda: {w.cluster for w in log[3:]} == set(setting.names),
            timeout=5,
            what="the rotation written to every cluster of both shards",
        )
        for w in log[3:]:
            assert w.replica == f"s{shard_of(w.cluster, 2)}" and w.objects == 1, w
        for r in replicas:
            assert r.daemon.board.document()["lastCycle"]["trigger"] == "webhook"
        forwards = [
            r.daemon.metrics.registry.get_sample_value(
                "secretsync_webhook_forwards_total", {"outcome": "sent"}
            )
            for r in replicas
        ]
        assert forwards == [1.0, None]  # shard 1 sends nothing back
        for c in kube_clusters:
            assert secret_value(c, setting.ns, "api", "token") == rotated.encode()
        assert_no_overlap(log)


async def test_a_git_writer_holding_its_lease_keeps_every_file_listed(
    fleet_repo: Callable[[dict[str, str | bytes]], Path],
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
) -> None:
    """The daemon with election on holds `secretsync-git` on a real apiserver and writes 150
    objects of one cluster to Git through the Lease gate: each cycle the kustomization lists
    all 150 and, after the first, no file changes (before: 50 listed, then the kustomization
    deleted and written again every cycle)."""
    lease_ns = kube_namespace(kube_cluster, prefix="lease")
    secrets_doc = "---\n".join(
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: s{i:03d}}}\n"
        f"spec:\n  clusterSelector: {{}}\n  target: {{name: s{i:03d}, namespace: ns{i % 3}}}\n"
        f"  data: {{v: {{vault: {{path: apps/p{i}, key: v}}}}}}\n"
        for i in range(150)
    )
    root = fleet_repo(
        {
            "secretsync.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\n"
            "metadata: {name: git-lease}\nspec: {defaults: {delivery: external}}\n",
            "clusters/c.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            "metadata: {name: ext}\nspec: {}\n",
            "secrets/all.yaml": secrets_doc,
        }
    )
    election = ElectionSettings(namespace=lease_ns, identity="git-writer", timing=DAEMON)
    home = kube_cluster.endpoint()
    coordinator = Coordinator(api=home, settings=election)
    settings = DaemonSettings(
        fleet_path=root, hmac_key=KEY, port=0, interval_s=3600, git=True, kube=False
    )

    def sources(fleet: Fleet, env: Mapping[str, str]) -> Mapping[str, resolve.Source]:
        return {"vault": FakeSource({})}  # type: ignore[arg-type]

    daemon = Daemon(settings=settings, make_sources=sources, coordinator=coordinator)
    kustomization = root / "rendered/ext/kustomization.yaml"
    expected = sorted(f"ns{i % 3}/s{i:03d}.yaml" for i in range(150))
    changed: list[int] = []
    try:
        coordinator.start()
        await wait_for(coordinator.writes_git, timeout=10, what="the Git Lease is held")
        assert holder(home, lease_ns, "secretsync-git") == "git-writer"
        engine = await daemon._wiring.engine_for(load_fleet(root))
        (gated,) = engine.sinks
        assert isinstance(gated, GatedSink) and isinstance(gated.inner, GitSink)
        for n in range(4):
            before = gated.inner.files_changed
            await daemon.cycle(trigger="interval")
            doc = daemon.board.document()
            assert doc["lastCycle"]["outcome"] == "ok", doc["lastCycle"]
            changed.append(gated.inner.files_changed - before)
            assert kustomization.is_file(), f"cycle {n + 1}: kustomization.yaml is gone"
            listed = yaml.safe_load(kustomization.read_text())["resources"]
            assert listed == expected, f"cycle {n + 1}: {len(listed)} listed"
        assert changed == [151, 0, 0, 0]
    finally:
        await coordinator.stop()
        await daemon._wiring.aclose()
        await home.aclose()


# --- the shard-count fence -----------------------------------------------------------------------


def coordinator(api: Endpoint, ns: str, who: str, *, shards: int, index: int) -> Coordinator:
    settings = ElectionSettings(
        shards=shards, shard_index=index, namespace=ns, identity=who, timing=FAST
    )
    return Coordinator(api=api, settings=settings)


async def test_a_replica_of_another_shard_count_waits_for_the_old_lease(
    api: Endpoint, lease_ns: str
) -> None:
    """1 -> 3 shards: the new replica of shard 1 (a Lease no one holds) does not take it while
    the old single replica holds shard 0 under `--shards 1`, whose clusters include shard 1's;
    it takes it once that Lease has expired."""
    old = coordinator(api, lease_ns, "old-0", shards=1, index=0)
    new = coordinator(api, lease_ns, "new-1", shards=3, index=1)
    old.start()
    try:
        await wait_for(lambda: old.shard.is_leader, timeout=5, what="the old replica leads")
        doc = lease_doc(api, lease_ns, shard_lease(0))
        assert doc is not None
        assert doc["metadata"]["annotations"] == {"secretsync.dev/shards": "1"}
        new.start()
        await wait_for(lambda: new.shard.attempts >= 3, timeout=5, what="the new one tries")
        assert not new.shard.is_leader and holder(api, lease_ns, shard_lease(1)) is None
        assert new.shard.fenced == (
            "Lease secretsync-shard-0 is held by old-0 with --shards 1 (this replica: "
            "--shards 3); waiting until it is released or expires"
        )
        assert new.document()["fence"] == new.shard.fenced
        await old.stop(release=False)  # dies: its Lease expires
        t0 = time.monotonic()
        took = await wait_for(lambda: new.shard.is_leader, timeout=10, what="the new one leads")
        assert took >= FAST.lease_duration_s - FAST.retry_period_s - 0.3, took
        assert new.shard.fenced is None
        doc = lease_doc(api, lease_ns, shard_lease(1))
        assert doc is not None and doc["spec"]["holderIdentity"] == "new-1"
        assert doc["metadata"]["annotations"] == {"secretsync.dev/shards": "3"}
        assert time.monotonic() - t0 < 10
    finally:
        await old.stop(release=False)
        await new.stop()


async def test_a_released_lease_of_another_count_does_not_fence(
    api: Endpoint, lease_ns: str
) -> None:
    """3 -> 1 shards: the old replicas stop gracefully (SIGTERM releases); their Leases stay,
    unheld, and the new single replica takes shard 0 on its first try."""
    olds = [coordinator(api, lease_ns, f"old-{i}", shards=3, index=i) for i in range(3)]
    for c in olds:
        c.start()
    await wait_for(lambda: all(c.shard.is_leader for c in olds), timeout=5, what="3 leaders")
    for c in olds:
        await c.stop()  # releases
    new = coordinator(api, lease_ns, "new-0", shards=1, index=0)
    new.start()
    try:
        took = await wait_for(lambda: new.shard.is_leader, timeout=5, what="the new one leads")
        assert took < FAST.lease_duration_s / 2, took
        assert [holder(api, lease_ns, shard_lease(i)) for i in range(3)] == ["new-0", None, None]
    finally:
        await new.stop()


async def test_two_counts_taking_leases_at_once_never_both_lead(
    api: Endpoint, lease_ns: str
) -> None:
    """Both pass the fence before either has written (held at a barrier): the check right
    after the write makes at least one of them let go at once, so never both lead."""
    a = coordinator(api, lease_ns, "a-1of1", shards=1, index=0)
    b = coordinator(api, lease_ns, "b-2of3", shards=3, index=2)
    barrier = asyncio.Barrier(2)
    for c in (a, b):
        fence, first = c.fence, [True]

        async def held_once(
            fence: Callable[[], Awaitable[str | None]] = fence, first: list[bool] = first
        ) -> str | None:
            reason = await fence()
            if first[0]:
                first[0] = False
                await barrier.wait()
            return reason

        c.shard._fence = held_once
    won = await asyncio.gather(a.shard.try_acquire_or_renew(), b.shard.try_acquire_or_renew())
    assert sum(won) <= 1, won
    held = {holder(api, lease_ns, shard_lease(0)), holder(api, lease_ns, shard_lease(2))}
    assert held - {None} == {c.settings.identity for c, w in zip((a, b), won, strict=True) if w}
    # from then on, each retry: still never both
    a.start()
    b.start()
    try:
        await wait_for(lambda: a.shard.is_leader or b.shard.is_leader, timeout=10, what="one leads")
        end = time.monotonic() + 2 * FAST.lease_duration_s
        while time.monotonic() < end:
            assert not (a.shard.is_leader and b.shard.is_leader)
            await asyncio.sleep(0.02)
    finally:
        await a.stop()
        await b.stop()

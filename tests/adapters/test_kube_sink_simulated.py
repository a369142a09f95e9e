"""KubeSink on the SIMULATED API server (tests/support/simulated.py), not on kube-apiserver.

Fast checks of create, update, prune, drift and conflict that need no kube build: two fake
clusters, each an aiohttp app on 127.0.0.1 that speaks the core/v1 Secret calls KubeSink makes
(server-side apply with managed fields, LIST with label selectors, DELETE with preconditions).
The same behaviours on real API servers are tests/adapters/test_kube_sink.py; a difference
between the two is a bug of the fake. Every test here carries the `simulated` marker.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from secretsync.core.model import FIELD_MANAGER
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport
from secretsync.fleet import load
from secretsync.kube.clusters import ClientFactory
from secretsync.sinks.kube.sink import KubeSink
from tests.adapters.test_kube_sink import API, DB, FLEET
from tests.support import canary
from tests.support.fakes import FakeSource
from tests.support.simulated import SECRETS, SimCluster, SimFleet, write_kubeconfig

pytestmark = pytest.mark.simulated

KEY = b"kube-simulated-hmac-key"
NAMESPACE = "apps"
MakeRepo = Callable[[dict[str, str | bytes]], Path]
# The fleet text of the real-server tests, so both run the same FleetSecrets: `db` on the
# clusters labelled env=prod (here both), `api` on every cluster.
DB_AND_API = DB.replace("NAMESPACE", NAMESPACE) + "---\n" + API.replace("NAMESPACE", NAMESPACE)
ONLY_DB = DB.replace("NAMESPACE", NAMESPACE)


@pytest.fixture
def sim() -> Iterator[SimFleet]:
    # no latency and no rate limit: these tests check what is written, not how fast
    fake = SimFleet(2, latency_s=0.0, rate=0.0, burst=0.0)
    fake.start()
    try:
        fake.ensure_namespaces([NAMESPACE])
        yield fake
    finally:
        fake.stop()


class Fleet:
    """A fleet repo whose clusters are the fake servers, and one cycle at a time through it."""

    def __init__(self, make: MakeRepo, sim: SimFleet, tmp: Path) -> None:
        self.sim = sim
        self.values: dict[str, dict[str, object]] = {}
        self.kubeconfigs = {
            c.name: write_kubeconfig(tmp / "kubeconfigs" / f"{c.name}.yaml", c)
            for c in sim.clusters
        }
        clusters = "---\n".join(
            f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {name}, labels: {{env: prod, server: {name}}}}}\n"
            f"spec:\n  kubeconfig: {{path: {path}}}\n"
            for name, path in self.kubeconfigs.items()
        )
        self.root = make({"secretsync.yaml": FLEET, "clusters/all.yaml": clusters})
        self.kube: KubeSink | None = None

    def sync(self, secrets_yaml: str) -> CycleReport:
        """Write the fleet's FleetSecrets anew, then run one cycle with a new KubeSink."""
        (self.root / "secrets").mkdir(exist_ok=True)
        (self.root / "secrets" / "all.yaml").write_text(secrets_yaml)
        self.kube = KubeSink(
            clients=ClientFactory(root=self.root),
            hmac_key=KEY,
            request_timeout_s=10.0,
            max_attempts=2,
            backoff_s=0.1,
        )
        engine = Engine(
            sources={"vault": FakeSource(self.values)},
            sinks=[self.kube],
            hmac_key=KEY,
            clock=lambda: datetime.now(UTC),
            cluster_timeout_s=30.0,
        )
        return asyncio.run(engine.run_cycle(load.load_fleet(self.root)))

    def stored(self, cluster: SimCluster, name: str) -> dict[str, Any] | None:
        """The object as the fake server holds it (read on the server's own loop)."""
        found = self.sim.call(lambda: cluster.objects[SECRETS.plural].get((NAMESPACE, name)))
        return None if found is None else dict(json.loads(found.raw))

    def version(self, cluster: SimCluster, name: str) -> str:
        obj = self.stored(cluster, name)
        assert obj is not None, f"{name} missing on {cluster.name}"
        return str(obj["metadata"]["resourceVersion"])

    def data(self, cluster: SimCluster, name: str) -> dict[str, bytes]:
        obj = self.stored(cluster, name)
        assert obj is not None, f"{name} missing on {cluster.name}"
        return {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}

    def put(self, cluster: SimCluster, name: str, data: dict[str, bytes]) -> None:
        """Write the Secret as another client would (PUT, no field manager of secretsync's)."""
        self.sim.call(lambda: self._put(cluster, name, data))

    def _put(self, cluster: SimCluster, name: str, data: dict[str, bytes]) -> None:
        found = cluster.objects[SECRETS.plural].get((NAMESPACE, name))
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}
        if found is not None:
            body = json.loads(found.raw)
        body["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
        if found is None:
            cluster.create(SECRETS, NAMESPACE, body, "kubectl")
        else:
            cluster.replace(SECRETS, NAMESPACE, name, body, "kubectl")


@pytest.fixture
def fleet(fleet_repo: MakeRepo, sim: SimFleet, tmp_path: Path) -> Fleet:
    return Fleet(fleet_repo, sim, tmp_path)


def value(fleet: Fleet, path: str, key: str) -> bytes:
    return str(fleet.values[path][key]).encode()


def test_create_then_a_second_cycle_writes_nothing(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("sim-db")}, "api": {"token": canary.new("sim")}}
    report = fleet.sync(DB_AND_API)
    assert report.ok, (report.failures, report.failed_clusters)
    assert sorted(i.action for i in report.items) == ["create"] * 4
    assert fleet.kube is not None and fleet.kube.writes == 4
    for cluster in fleet.sim.clusters:
        assert fleet.data(cluster, "db") == {
            "password": value(fleet, "db", "password"),
            "host": f"db.{cluster.name}.internal".encode(),
        }
        obj = fleet.stored(cluster, "db")
        assert obj is not None
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "secretsync"
        assert {m["manager"] for m in obj["metadata"]["managedFields"]} == {FIELD_MANAGER}
    again = fleet.sync(DB_AND_API)
    assert again.ok
    assert {i.action for i in again.items} == {"unchanged"}
    assert fleet.kube.writes == 0


def test_changed_value_is_updated_on_every_cluster(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("sim-db")}}
    assert fleet.sync(ONLY_DB).ok
    versions = {c.name: fleet.version(c, "db") for c in fleet.sim.clusters}
    fleet.values["db"] = {"password": canary.new("sim-db-rotated")}
    report = fleet.sync(ONLY_DB)
    assert report.ok, report.failures
    assert [i.action for i in report.items] == ["update", "update"]
    for cluster in fleet.sim.clusters:
        assert fleet.data(cluster, "db")["password"] == value(fleet, "db", "password")
        assert fleet.version(cluster, "db") != versions[cluster.name]


def test_removed_secret_is_pruned_and_foreign_objects_stay(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("sim-db")}, "api": {"token": canary.new("sim")}}
    assert fleet.sync(DB_AND_API).ok
    first = fleet.sim.clusters[0]
    fleet.put(first, "foreign", {"x": b"y"})
    report = fleet.sync(ONLY_DB)  # api removed from the fleet
    assert report.ok, report.failures
    assert sorted(i.action for i in report.items) == ["delete", "delete", "unchanged", "unchanged"]
    for cluster in fleet.sim.clusters:
        assert fleet.stored(cluster, "api") is None
        assert fleet.stored(cluster, "db") is not None
    assert fleet.data(first, "foreign") == {"x": b"y"}


def test_hand_edit_is_drift_and_is_repaired(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("sim-db")}}
    assert fleet.sync(ONLY_DB).ok
    edited = fleet.sim.clusters[1]
    fleet.put(edited, "db", {"password": b"hand-edit"})
    report = fleet.sync(ONLY_DB)
    assert report.ok, report.failures
    (update,) = [i for i in report.items if i.action == "update"]
    assert update.cluster == edited.name
    assert "changed outside secretsync" in update.reason
    assert fleet.kube is not None and fleet.kube.drifted[edited.name] == 1
    assert fleet.data(edited, "db")["password"] == value(fleet, "db", "password")


def test_foreign_object_with_the_target_name_is_a_conflict_left_alone(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("sim-db")}}
    taken = fleet.sim.clusters[0]
    fleet.put(taken, "db", {"mine": b"keep"})
    report = fleet.sync(ONLY_DB)
    assert not report.ok
    (failure,) = report.failures
    assert failure.cluster == taken.name
    assert "exists and is not managed by secretsync" in failure.reason
    assert fleet.data(taken, "db") == {"mine": b"keep"}
    other = fleet.sim.clusters[1]
    assert fleet.data(other, "db")["password"] == value(fleet, "db", "password")

"""Delivery through the Kubernetes API, on three real kube-apiservers (tests/MATRIX.md rows T1-T9).

Each test builds its own fleet whose cluster names are unique to the test, so objects other
tests left on the shared servers are never this fleet's to prune.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from secretsync.core.model import FIELD_MANAGER
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport
from secretsync.fleet import load
from secretsync.kube.clusters import ClientFactory
from secretsync.sinks.kube.sink import KubeSink
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import apiserver_metrics, canary
from tests.support.deliveries import DigestKind, registered
from tests.support.fakes import FakeSource
from tests.support.kubecluster import KubeCluster

KEY = b"kube-test-hmac-key"
MakeRepo = Callable[[dict[str, str | bytes]], Path]

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: kube-test}
spec:
  defaults: {delivery: direct}
"""

CRDS = [
    ("bitnami.com", "v1alpha1", "SealedSecret", "sealedsecrets"),
    ("external-secrets.io", "v1", "ExternalSecret", "externalsecrets"),
]


def crd(group: str, version: str, kind: str, plural: str) -> dict[str, Any]:
    """A minimal CRD of the project's own making: the kind exists, any spec is accepted."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def crds(kube_clusters: list[KubeCluster]) -> None:
    install_crds(kube_clusters, CRDS)


def install_crds(kube_clusters: list[KubeCluster], specs: list[tuple[str, str, str, str]]) -> None:
    """The CRDs (group, version, kind, plural) on every cluster, once each is served."""
    for cluster in kube_clusters:
        with cluster.api_client() as api:
            ext = k8s.ApiextensionsV1Api(api)
            for spec in specs:
                try:
                    ext.create_custom_resource_definition(crd(*spec))
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            deadline = time.monotonic() + 30
            for group, version, _, plural in specs:
                while True:
                    try:
                        k8s.CustomObjectsApi(api).list_cluster_custom_object(group, version, plural)
                        break
                    except ApiException:
                        assert time.monotonic() < deadline, f"CRD {plural}.{group} never served"
                        time.sleep(0.2)


class Fleet:
    """A per-test fleet on the shared clusters, with helpers to run cycles and read results."""

    def __init__(self, make: MakeRepo, clusters: list[KubeCluster], namespace: str, tmp: Path):
        self.suffix = secrets.token_hex(3)
        self.clusters = clusters
        self.namespace = namespace
        self.tmp = tmp
        self.make = make
        self.values: dict[str, dict[str, object]] = {}
        self.root: Path | None = None
        self.kube: KubeSink | None = None

    def name(self, cluster: KubeCluster) -> str:
        return f"{cluster.name}-{self.suffix}"

    def write(
        self,
        secrets_yaml: str,
        *,
        cluster_extra: str = "",
        user: str = "admin",
        users: dict[str, str] | None = None,
    ) -> Path:
        docs = []
        for c in self.clusters:
            kubeconfig = c.kubeconfig(
                self.tmp / f"{c.name}-{(users or {}).get(c.name, user)}.yaml",
                user=(users or {}).get(c.name, user),  # type: ignore[arg-type]
            )
            docs.append(
                f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
                f"metadata: {{name: {self.name(c)}, labels: {{env: prod, server: {c.name}}}}}\n"
                f"spec:\n  kubeconfig: {{path: {kubeconfig}}}\n{cluster_extra}"
            )
        files: dict[str, str | bytes] = {
            "secretsync.yaml": FLEET,
            "clusters/all.yaml": "---\n".join(docs),
            "secrets/all.yaml": secrets_yaml.replace("NAMESPACE", self.namespace),
        }
        if self.root is None:
            self.root = self.make(files)
        else:
            for rel, text in files.items():
                (self.root / rel).write_text(str(text))
        return self.root

    def sync_after(self, secrets_yaml: str) -> CycleReport:
        """Write the fleet's FleetSecrets anew, then run one cycle."""
        self.write(secrets_yaml)
        return self.sync()

    def sync(
        self,
        *,
        dry_run: bool = False,
        timeout_s: float = 60.0,
        request_timeout_s: float = 10.0,
        keep_sink: bool = False,
        batch_size: int = 100,
        restart_wait_s: float = 10.0,
        allow_deletes: bool = False,
    ) -> CycleReport:
        """One cycle; `keep_sink` reuses the last cycle's sink (as the daemon does)."""
        assert self.root is not None
        fleet = load.load_fleet(self.root)
        if not keep_sink or self.kube is None:
            self.kube = KubeSink(
                clients=ClientFactory(root=self.root),
                hmac_key=KEY,
                request_timeout_s=request_timeout_s,
                max_attempts=2,
                backoff_s=0.1,
                restart_wait_s=restart_wait_s,
                restart_poll_s=0.1,
            )
        engine = Engine(
            sources={"vault": FakeSource(self.values)},
            sinks=[self.kube],
            hmac_key=KEY,
            clock=lambda: datetime.now(UTC),
            cluster_timeout_s=timeout_s,
            batch_size=batch_size,
        )
        return asyncio.run(
            engine.run_cycle(fleet, dry_run=dry_run, allow_deletes=allow_deletes)
        )  # pools close with the loop


@pytest.fixture
def fleet(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> Fleet:
    return Fleet(fleet_repo, kube_clusters, kube_namespace(), tmp_path)


def core(cluster: KubeCluster) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(cluster.api_client())


def secret(cluster: KubeCluster, namespace: str, name: str) -> k8s.V1Secret | None:
    try:
        return core(cluster).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def data(obj: k8s.V1Secret | None) -> dict[str, bytes]:
    assert obj is not None
    return {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}


DB = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: db}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  target: {name: db, namespace: NAMESPACE}
  data:
    password: {vault: {path: db, key: password}}
    host: {value: "db.{{ cluster.labels.server }}.internal"}
"""

API = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: api}
spec:
  clusterSelector: {}
  target: {name: api, namespace: NAMESPACE}
  data:
    token: {vault: {path: api, key: token}}
"""


def test_sync_applies_then_second_sync_writes_nothing(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("db")}, "api": {"token": canary.new("api")}}
    fleet.write(DB + "---\n" + API)
    report = fleet.sync()
    assert report.ok, (report.failures, report.failed_clusters)
    assert fleet.kube is not None and fleet.kube.writes == 6
    # per cluster: the labelled list, one name check for both creates, two applies
    assert fleet.kube.requests == 3 * 4
    versions = {}
    for c in fleet.clusters:
        obj = secret(c, fleet.namespace, "db")
        assert data(obj) == {
            "password": str(fleet.values["db"]["password"]).encode(),
            "host": f"db.{c.name}.internal".encode(),
        }
        assert obj is not None and obj.metadata is not None
        assert obj.metadata.labels["app.kubernetes.io/managed-by"] == "secretsync"
        assert obj.metadata.labels["secretsync.dev/fleet-secret"] == "db"
        assert obj.metadata.annotations["secretsync.dev/cluster"] == fleet.name(c)
        managers = {m.manager for m in obj.metadata.managed_fields or []}
        assert managers == {FIELD_MANAGER}
        versions[c.name] = obj.metadata.resource_version
    again = fleet.sync()
    assert again.ok
    assert fleet.kube.writes == 0 and fleet.kube.requests == 3
    assert {i.action for i in again.items} == {"unchanged"}
    for c in fleet.clusters:
        obj = secret(c, fleet.namespace, "db")
        assert obj is not None and obj.metadata is not None
        assert obj.metadata.resource_version == versions[c.name]


def test_hand_edits_and_deletions_are_repaired(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("db")}, "api": {"token": canary.new("api")}}
    fleet.write(DB + "---\n" + API)
    assert fleet.sync().ok
    a, b = fleet.clusters[0], fleet.clusters[1]
    core(a).patch_namespaced_secret(
        "db", fleet.namespace, {"data": {"password": base64.b64encode(b"hand-edit").decode()}}
    )
    core(b).delete_namespaced_secret("api", fleet.namespace)
    report = fleet.sync()
    assert report.ok
    by = {(i.cluster, i.name): i for i in report.items}
    assert by[(fleet.name(a), "db")].action == "update"
    assert "changed outside secretsync" in by[(fleet.name(a), "db")].reason
    assert by[(fleet.name(b), "api")].action == "create"
    assert fleet.kube is not None and fleet.kube.drifted[fleet.name(a)] == 1
    assert (
        data(secret(a, fleet.namespace, "db"))["password"]
        == str(fleet.values["db"]["password"]).encode()
    )
    assert data(secret(b, fleet.namespace, "api")) == {
        "token": str(fleet.values["api"]["token"]).encode()
    }
    assert fleet.sync().items and fleet.kube.writes == 0


def test_changed_value_reaches_every_cluster_and_removed_secret_is_pruned(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("db")}, "api": {"token": canary.new("api")}}
    fleet.write(DB + "---\n" + API)
    assert fleet.sync().ok
    foreign = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="foreign"), string_data={"x": "y"})
    core(fleet.clusters[0]).create_namespaced_secret(fleet.namespace, foreign)
    fleet.values["db"] = {"password": canary.new("db-rotated")}
    fleet.write(DB)  # api removed
    report = fleet.sync()
    assert report.ok
    assert sorted(i.action for i in report.items) == ["delete"] * 3 + ["update"] * 3
    for c in fleet.clusters:
        assert (
            data(secret(c, fleet.namespace, "db"))["password"]
            == str(fleet.values["db"]["password"]).encode()
        )
        assert secret(c, fleet.namespace, "api") is None
    assert secret(fleet.clusters[0], fleet.namespace, "foreign") is not None


@pytest.mark.parametrize(
    "others", ["", "---\n" + API], ids=["read-by-name", "found-by-the-namespace-list"]
)
def test_foreign_object_with_target_name_is_left_alone(fleet: Fleet, others: str) -> None:
    fleet.values = {"db": {"password": canary.new("db")}, "api": {"token": canary.new("api")}}
    b = fleet.clusters[1]
    foreign = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="db"), string_data={"mine": "keep"})
    core(b).create_namespaced_secret(fleet.namespace, foreign)
    fleet.write(DB + others)
    report = fleet.sync()
    assert not report.ok
    (failure,) = report.failures
    assert failure.cluster == fleet.name(b)
    assert "exists and is not managed by secretsync" in failure.reason
    assert data(secret(b, fleet.namespace, "db")) == {"mine": b"keep"}
    for c in (fleet.clusters[0], fleet.clusters[2]):
        assert "password" in data(secret(c, fleet.namespace, "db"))
    if others:
        assert data(secret(b, fleet.namespace, "api")) == {
            "token": str(fleet.values["api"]["token"]).encode()
        }
    fleet.write(DB.replace("  data:\n", "  adopt: true\n  data:\n") + others)
    assert fleet.sync().ok
    assert (
        data(secret(b, fleet.namespace, "db"))["password"]
        == str(fleet.values["db"]["password"]).encode()
    )


def test_rbac_forbidden_is_a_clear_per_cluster_failure(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet.values = {"db": {"password": canary.new("db")}}
    fleet.write(DB, users={"kube-b": "unprivileged"})
    caplog.set_level(logging.DEBUG, logger="secretsync.sinks.kube")
    report = fleet.sync()
    assert set(report.failed_clusters) == {fleet.name(fleet.clusters[1])}
    assert "forbidden" in report.failed_clusters[fleet.name(fleet.clusters[1])]
    # a 403 will not pass on a retry (the apiserver's request counters leave out what its
    # authorizer refused, so the sink's own retry log is the witness)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "HTTP 403, retrying" in m], messages
    assert secret(fleet.clusters[0], fleet.namespace, "db") is not None


def test_forbidden_write_is_tried_once_and_fails_that_object(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """T5: a user who may read Secrets but not write them: each apply is refused (403) once,
    never retried, and the object fails naming RBAC; the other clusters are written."""
    cluster = fleet.clusters[1]
    name = f"secretsync-list-only-{fleet.suffix}"
    with cluster.api_client() as api:
        rbac = k8s.RbacAuthorizationV1Api(api)
        rbac.create_cluster_role(
            k8s.V1ClusterRole(
                metadata=k8s.V1ObjectMeta(name=name),
                rules=[
                    k8s.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["get", "list"])
                ],
            )
        )
        rbac.create_cluster_role_binding(
            k8s.V1ClusterRoleBinding(
                metadata=k8s.V1ObjectMeta(name=name),
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name
                ),
                subjects=[
                    k8s.RbacV1Subject(
                        api_group="rbac.authorization.k8s.io",
                        kind="User",
                        name="secretsync-unprivileged",
                    )
                ],
            )
        )
        try:
            deadline = time.monotonic() + 30
            with cluster.api_client(user="unprivileged") as limited:
                while True:  # the binding reaches the authorizer's cache
                    try:
                        k8s.CoreV1Api(limited).list_secret_for_all_namespaces(limit=1)
                        break
                    except ApiException as exc:
                        if exc.status != 403 or time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)  # poll interval under the deadline above
            fleet.values = {"db": {"password": canary.new("db")}}
            fleet.write(DB, users={cluster.name: "unprivileged"})
            caplog.set_level(logging.DEBUG, logger="secretsync.sinks.kube")
            report = fleet.sync()
        finally:
            rbac.delete_cluster_role_binding(name)
            rbac.delete_cluster_role(name)
    assert not report.failed_clusters
    (failed,) = report.failures
    assert failed.cluster == fleet.name(cluster)
    assert "forbidden (HTTP 403)" in failed.reason
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "HTTP 403, retrying" in m], messages
    for other in (fleet.clusters[0], fleet.clusters[2]):
        assert secret(other, fleet.namespace, "db") is not None


def test_dry_run_writes_nothing(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("db")}}
    fleet.write(DB)
    report = fleet.sync(dry_run=True)
    assert report.ok
    assert {i.action for i in report.items} == {"create"}
    assert fleet.kube is not None and fleet.kube.writes == 0
    assert all(secret(c, fleet.namespace, "db") is None for c in fleet.clusters)


def test_missing_namespace_is_an_error_unless_created(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("db")}}
    missing = f"absent-{secrets.token_hex(3)}"
    fleet.write(DB.replace("NAMESPACE", missing))
    before = [apiserver_metrics.requests(c) for c in fleet.clusters]
    report = fleet.sync()
    after = [apiserver_metrics.requests(c) for c in fleet.clusters]
    assert len(report.failures) == 3
    assert all(f"namespace '{missing}' does not exist" in f.reason for f in report.failures)
    # a 404 is an answer, not a fault: one apply per failing object, never retried
    applies = [apiserver_metrics.writes(b, a)["APPLY"] for b, a in zip(before, after, strict=True)]
    assert applies == [1.0, 1.0, 1.0], applies
    fleet.write(DB.replace("NAMESPACE", missing), cluster_extra="  createNamespaces: true\n")
    assert fleet.sync().ok
    assert all(secret(c, missing, "db") is not None for c in fleet.clusters)
    for c in fleet.clusters:
        core(c).delete_namespace(missing)


def test_immutable_secret_change_is_a_clear_error(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("db")}}
    immutable = DB.replace("namespace: NAMESPACE}", "namespace: NAMESPACE, immutable: true}")
    fleet.write(immutable)
    assert fleet.sync().ok
    fleet.values["db"] = {"password": canary.new("db-2")}
    before = [apiserver_metrics.requests(c) for c in fleet.clusters]
    report = fleet.sync()
    after = [apiserver_metrics.requests(c) for c in fleet.clusters]
    assert len(report.failures) == 3
    assert all("immutable" in f.reason for f in report.failures)
    # a 422 will not pass on a retry: one apply per failing object
    applies = [apiserver_metrics.writes(b, a)["APPLY"] for b, a in zip(before, after, strict=True)]
    assert applies == [1.0, 1.0, 1.0], applies


def test_stopped_cluster_does_not_hold_up_the_others(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("db")}}
    fleet.write(DB)
    c = fleet.clusters[2]
    c.pause()
    try:
        started = time.monotonic()
        report = fleet.sync(timeout_s=8.0, request_timeout_s=2.0)
        elapsed = time.monotonic() - started
    finally:
        c.resume()
    assert set(report.failed_clusters) == {fleet.name(c)}
    assert elapsed < 60, "bounded by the dead cluster's own timeout"
    for other in fleet.clusters[:2]:
        assert secret(other, fleet.namespace, "db") is not None
    assert fleet.sync().ok


def test_applied_sealed_and_external_objects(fleet: Fleet, crds: None) -> None:
    from tests.support import keys

    fleet.values = {"db": {"password": canary.new("db")}}
    assert fleet.write(DB)  # creates root
    assert fleet.root is not None
    (fleet.root / "certs").mkdir(exist_ok=True)
    (fleet.root / "certs/c.pem").write_bytes(keys.cert_pem(keys.rsa_key(0)))
    fleet.write(
        DB,
        cluster_extra="  delivery: sealed\n  apply: true\n  sealedSecrets: {certFile: certs/c.pem}\n",
    )
    report = fleet.sync()
    assert report.ok, (report.failures, report.failed_clusters)
    api = k8s.CustomObjectsApi(fleet.clusters[0].api_client())
    obj = api.get_namespaced_custom_object(
        "bitnami.com", "v1alpha1", fleet.namespace, "sealedsecrets", "db"
    )
    assert set(obj["spec"]["encryptedData"]) == {"password", "host"}
    from secretsync.delivery import seal

    assert (
        seal.unseal_manifest(obj, [keys.rsa_key(0)])["password"]
        == str(fleet.values["db"]["password"]).encode()
    )
    assert fleet.sync().ok and fleet.kube is not None and fleet.kube.writes == 0
    fleet.write(DB, cluster_extra="  delivery: external\n  apply: true\n")
    report = fleet.sync()
    assert report.ok, (report.failures, report.failed_clusters)
    es = api.get_namespaced_custom_object(
        "external-secrets.io", "v1", fleet.namespace, "externalsecrets", "db"
    )
    assert es["spec"]["data"] == [
        {"secretKey": "password", "remoteRef": {"key": "db", "property": "password"}}
    ]


def test_a_delivery_registered_from_the_tests_is_applied_pruned_and_its_drift_repaired(
    fleet: Fleet,
) -> None:
    """A delivery the product does not know (`tests.support.deliveries`, API only): its
    objects go to the kind's own API paths, its drift projection tells a hand edit, and what
    it owns is pruned through the kind found by the object's kind."""
    kind = DigestKind(name="digest-api", in_git=False)
    install_crds(
        fleet.clusters[:1], [("test.secretsync.dev", "v1", "SecretDigest", "secretdigests")]
    )
    fleet.clusters = fleet.clusters[:1]
    api = k8s.CustomObjectsApi(fleet.clusters[0].api_client())

    def digest(name: str) -> dict[str, Any]:
        obj: dict[str, Any] = api.get_namespaced_custom_object(
            "test.secretsync.dev", "v1", fleet.namespace, "secretdigests", name
        )
        return obj

    with registered(kind):
        fleet.values = {"db": {"password": canary.new("db")}, "api": {"token": canary.new("api")}}
        extra = "  delivery: digest-api\n  digests: {team: blue}\n"
        fleet.write(DB + "---\n" + API, cluster_extra=extra)
        report = fleet.sync()
        assert report.ok, (report.failures, report.failed_clusters)
        assert sorted((i.name, i.action) for i in report.items) == [
            ("api", "create"),
            ("db", "create"),
        ]
        obj = digest("db")
        assert sorted(obj["digests"]) == ["host", "password"]
        assert obj["metadata"]["annotations"]["test.secretsync.dev/team"] == "blue"
        assert str(fleet.values["db"]["password"]) not in str(obj)
        assert secret(fleet.clusters[0], fleet.namespace, "db") is None  # no Secret: its kind

        again = fleet.sync()
        assert again.ok and fleet.kube is not None and fleet.kube.writes == 0
        assert {i.action for i in again.items} == {"unchanged"}

        edited = {**obj["digests"], "password": "0" * 64}
        api.patch_namespaced_custom_object(
            "test.secretsync.dev",
            "v1",
            fleet.namespace,
            "secretdigests",
            "db",
            {"digests": edited},
        )
        repaired = fleet.sync()
        assert repaired.ok
        by = {i.name: i for i in repaired.items}
        assert by["db"].action == "update" and "changed outside secretsync" in by["db"].reason
        assert by["api"].action == "unchanged"
        assert digest("db")["digests"] == obj["digests"]

        fleet.write(DB, cluster_extra=extra)
        pruned = fleet.sync()
        assert pruned.ok
        assert {(i.name, i.action) for i in pruned.items} == {
            ("db", "unchanged"),
            ("api", "delete"),
        }
        with pytest.raises(ApiException) as gone:
            digest("api")
        assert gone.value.status == 404


PAYMENTS_API: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "payments-api"},
    "spec": {
        "selector": {"matchLabels": {"app": "p"}},
        "template": {
            "metadata": {"labels": {"app": "p"}},
            "spec": {"containers": [{"name": "c", "image": "example.invalid/p:1"}]},
        },
    },
}
RESTART = "  rollout: {restart: [{kind: Deployment, name: payments-api}]}\n  data:\n"


def restarted_for(cluster: KubeCluster, namespace: str) -> str | None:
    d = k8s.AppsV1Api(cluster.api_client()).read_namespaced_deployment("payments-api", namespace)
    return (d.spec.template.metadata.annotations or {}).get("secretsync.dev/restarted-for")


def test_rollout_restart_only_when_content_changes(fleet: Fleet) -> None:
    fleet.values = {"db": {"password": canary.new("db")}}
    c = fleet.clusters[0]
    apps = k8s.AppsV1Api(c.api_client())
    apps.create_namespaced_deployment(fleet.namespace, PAYMENTS_API)
    fleet.write(DB.replace("  data:\n", RESTART))
    assert fleet.sync().ok
    first = restarted_for(c, fleet.namespace)
    assert first is not None and first.startswith("db@")
    version = apps.read_namespaced_deployment(
        "payments-api", fleet.namespace
    ).metadata.resource_version
    assert fleet.sync().ok
    assert (
        apps.read_namespaced_deployment("payments-api", fleet.namespace).metadata.resource_version
        == version
    )
    fleet.values["db"] = {"password": canary.new("db-rotated")}
    assert fleet.sync().ok
    assert restarted_for(c, fleet.namespace) not in (None, first)


def deployment_patches(clusters: list[KubeCluster]) -> list[float]:
    return [
        apiserver_metrics.requests(c, resource="deployments").get("PATCH", 0.0) for c in clusters
    ]


def test_two_changed_secrets_restart_their_deployment_once_per_cycle(fleet: Fleet) -> None:
    """Both Secrets a Deployment reads change in one cycle, in separate batches: one PATCH of
    the Deployment per cluster (the apiservers' own counters), none on a cycle that changes
    nothing, one again when both rotate."""
    fleet.values = {"db": {"password": canary.new("db")}, "api": {"token": canary.new("api")}}
    for c in fleet.clusters:
        k8s.AppsV1Api(c.api_client()).create_namespaced_deployment(fleet.namespace, PAYMENTS_API)
    fleet.write(DB.replace("  data:\n", RESTART) + "---\n" + API.replace("  data:\n", RESTART))
    before = deployment_patches(fleet.clusters)
    assert fleet.sync(batch_size=1).ok  # one object a batch: the restart waits for the last
    assert [a - b for a, b in zip(before, deployment_patches(fleet.clusters), strict=True)] == [
        -1.0
    ] * len(fleet.clusters)
    first = restarted_for(fleet.clusters[0], fleet.namespace)
    assert first is not None and first.startswith("2 secrets@")
    before = deployment_patches(fleet.clusters)
    assert fleet.sync(batch_size=1).ok
    assert deployment_patches(fleet.clusters) == before  # nothing changed: no restart
    fleet.values = {"db": {"password": canary.new("db2")}, "api": {"token": canary.new("api2")}}
    assert fleet.sync(batch_size=1).ok
    after = deployment_patches(fleet.clusters)
    assert [a - b for a, b in zip(after, before, strict=True)] == [1.0] * len(fleet.clusters)
    assert restarted_for(fleet.clusters[0], fleet.namespace) not in (None, first)


def test_a_sealed_secret_restart_waits_for_the_controllers_secret(fleet: Fleet, crds: None) -> None:
    """With `apply: true` the sealed-secrets controller writes the Secret: the Deployment is
    restarted only once that Secret carries the delivered content hash. Until then the restart
    is pending (named in the sink's report) and the next cycle looks again."""
    from tests.support import keys

    fleet.values = {"db": {"password": canary.new("db")}}
    fleet.write(DB)
    assert fleet.root is not None
    (fleet.root / "certs").mkdir(exist_ok=True)
    (fleet.root / "certs/c.pem").write_bytes(keys.cert_pem(keys.rsa_key(0)))
    fleet.write(
        DB.replace("  data:\n", RESTART),
        cluster_extra="  delivery: sealed\n  apply: true\n  sealedSecrets: {certFile: certs/c.pem}\n",
    )
    for c in fleet.clusters:
        k8s.AppsV1Api(c.api_client()).create_namespaced_deployment(fleet.namespace, PAYMENTS_API)
    before = deployment_patches(fleet.clusters)
    assert fleet.sync(restart_wait_s=0.5).ok
    assert deployment_patches(fleet.clusters) == before  # no controller yet: no restart
    assert fleet.kube is not None
    assert fleet.kube.restarts.pending() == {
        fleet.name(c): [f"Deployment {fleet.namespace}/payments-api"] for c in fleet.clusters
    }
    assert restarted_for(fleet.clusters[0], fleet.namespace) is None
    # play the controller: the Secret it writes carries the template's annotations
    for c in fleet.clusters:
        sealed = k8s.CustomObjectsApi(c.api_client()).get_namespaced_custom_object(
            "bitnami.com", "v1alpha1", fleet.namespace, "sealedsecrets", "db"
        )
        annotations = sealed["spec"]["template"]["metadata"]["annotations"]
        core(c).create_namespaced_secret(
            fleet.namespace,
            {"metadata": {"name": "db", "annotations": annotations}, "data": {}},
        )
    assert fleet.sync(keep_sink=True, restart_wait_s=0.5).ok
    after = deployment_patches(fleet.clusters)
    assert [a - b for a, b in zip(after, before, strict=True)] == [1.0] * len(fleet.clusters)
    assert fleet.kube.restarts.pending() == {}
    assert (restarted_for(fleet.clusters[0], fleet.namespace) or "").startswith("db@")


def many(names: list[str]) -> str:
    return "---\n".join(API.replace("name: api", f"name: {n}") for n in names)


def test_deletes_over_the_limit_reach_no_apiserver(fleet: Fleet) -> None:
    """Three of eight Secrets leave the fleet (25 % allows two): no DELETE reaches any
    apiserver (its audit log), every Secret stays, each is reported held; lifted, the three go."""
    names = [f"s{i}" for i in range(8)]
    fleet.values = {"api": {"token": canary.new("api")}}
    fleet.write(many(names))
    assert fleet.sync().ok
    held = fleet.sync_after(many(names[3:]))
    assert len(held.held) == 3 * len(fleet.clusters) and held.deletes == 0
    for c in fleet.clusters:
        assert apiserver_metrics.audited(c, verb="delete", namespace=fleet.namespace) == []
        for n in names:
            assert secret(c, fleet.namespace, n) is not None
    lifted = fleet.sync(allow_deletes=True)
    assert lifted.ok and lifted.deletes == 3 * len(fleet.clusters)
    for c in fleet.clusters:
        deleted = apiserver_metrics.audited(c, verb="delete", namespace=fleet.namespace)
        assert sorted(deleted) == ["s0", "s1", "s2"]


def test_kubeconfig_from_a_secret_in_the_home_cluster(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> None:
    home, target = kube_clusters[0], kube_clusters[1]
    namespace = kube_namespace(target)
    holder = kube_namespace(home, prefix="ss")
    kubeconfig = target.kubeconfig(tmp_path / "target.yaml").read_bytes()
    core(home).create_namespaced_secret(
        holder,
        {
            "metadata": {"name": "kubeconfig-target"},
            "data": {"kubeconfig": base64.b64encode(kubeconfig).decode()},
        },
    )
    name = f"via-secret-{secrets.token_hex(3)}"
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/c.yaml": f"""\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {{name: {name}, labels: {{env: prod, server: x}}}}
spec:
  kubeconfig: {{secretRef: {{namespace: {holder}, name: kubeconfig-target}}}}
""",
            "secrets/all.yaml": DB.replace("NAMESPACE", namespace),
        }
    )
    value = canary.new("via-secret")
    sink = KubeSink(clients=ClientFactory(root=root, home=home.endpoint()), hmac_key=KEY)
    engine = Engine(
        sources={"vault": FakeSource({"db": {"password": value}})},
        sinks=[sink],
        hmac_key=KEY,
        clock=lambda: datetime.now(UTC),
    )
    report = asyncio.run(engine.run_cycle(load.load_fleet(root)))  # pools close with the loop
    assert report.ok, (report.failures, report.failed_clusters)
    assert data(secret(target, namespace, "db"))["password"] == value.encode()
    assert secret(home, namespace, "db") is None, "delivered to the target, not the home cluster"


def test_missing_kubeconfig_secret_is_a_clear_cluster_failure(
    fleet_repo: MakeRepo, kube_clusters: list[KubeCluster], kube_namespace: NamespaceFactory
) -> None:
    home = kube_clusters[0]
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/c.yaml": """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {name: lost, labels: {env: prod, server: x}}
spec:
  kubeconfig: {secretRef: {namespace: nowhere, name: kubeconfig-lost}}
""",
            "secrets/all.yaml": DB.replace("NAMESPACE", "default"),
        }
    )
    sink = KubeSink(clients=ClientFactory(root=root, home=home.endpoint()), hmac_key=KEY)
    engine = Engine(
        sources={"vault": FakeSource({"db": {"password": canary.new("lost")}})},
        sinks=[sink],
        hmac_key=KEY,
        clock=lambda: datetime.now(UTC),
    )
    report = asyncio.run(engine.run_cycle(load.load_fleet(root)))  # pools close with the loop
    assert report.failed_clusters == {
        "lost": "cluster 'lost': cannot read kubeconfig Secret nowhere/kubeconfig-lost (HTTP 404 Not Found)"
    }

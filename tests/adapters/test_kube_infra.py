"""The test clusters are real Kubernetes API servers: checked with the official client.

Three independent clusters; Secret CRUD with label selectors and stale-write conflicts;
server-side apply with field managers and their conflicts; RBAC 403 for the unprivileged
token (client and kubeconfig); CRDs with schema validation and applied custom objects;
namespace deletion, owner-reference GC and service-account tokens through the controller
manager; a cluster's start, pause/resume and clean stop. Waits are watches bounded by deadlines.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from tests.adapters.conftest_kube import NamespaceFactory
from tests.support.kubecluster import KUBE_VERSION, KubeBinaries, KubeCluster, start_cluster

APPLY = "application/apply-patch+yaml"
WAIT_S = 60.0


def wait_until(
    list_fn: Callable[..., Any],
    predicate: Callable[[dict[str, Any]], bool],
    *,
    what: str,
    timeout: float = WAIT_S,
    **list_kwargs: Any,
) -> dict[str, Any]:
    """List, then watch, until `predicate(objects by name)` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    listing = list_fn(**list_kwargs)
    objects: dict[str, Any] = {name_of(item): item for item in listing.items}
    if predicate(objects):
        return objects
    resource_version = listing.metadata.resource_version
    watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
    while (remaining := deadline - time.monotonic()) > 0:
        for event in watcher.stream(
            list_fn,
            resource_version=resource_version,
            timeout_seconds=max(1, int(remaining)),
            _request_timeout=remaining + 5,
            **list_kwargs,
        ):
            obj = event["object"]
            resource_version = meta(obj).resource_version
            if event["type"] == "DELETED":
                objects.pop(name_of(obj), None)
            else:
                objects[name_of(obj)] = obj
            if predicate(objects):
                watcher.stop()
                return objects
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s")


def meta(obj: Any) -> k8s.V1ObjectMeta:
    metadata: k8s.V1ObjectMeta | None = obj.metadata
    assert metadata is not None
    return metadata


def name_of(obj: Any) -> str:
    name: str | None = meta(obj).name
    assert name is not None
    return name


def names_in(listing: Any) -> set[str]:
    return {name_of(item) for item in listing.items}


def raw_json(resp: object) -> tuple[int, dict[str, Any]]:
    """Status and body of a `_preload_content=False` response."""
    assert isinstance(resp, urllib3.BaseHTTPResponse)
    body: dict[str, Any] = json.loads(resp.data)
    return resp.status, body


def api_status(call: Callable[[], object]) -> int:
    """The HTTP status of a call that must fail (the body is not looked at: it may hold data)."""
    with pytest.raises(ApiException) as info:
        call()
    return int(info.value.status)


def secret(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> k8s.V1Secret:
    return k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name, labels=labels or {}), string_data=data)


# --- clusters --------------------------------------------------------------------------------


def test_three_clusters_are_independent(
    kube_clusters: list[KubeCluster],
    kube_binaries: KubeBinaries,
    kube_namespace: NamespaceFactory,
) -> None:
    assert len(kube_clusters) == 3
    assert len({c.server for c in kube_clusters}) == 3
    assert all(c.server.startswith("https://127.0.0.1:") for c in kube_clusters)
    assert len({c.ca_data for c in kube_clusters}) == 3
    assert len({c.admin_token for c in kube_clusters}) == 3

    versions = set()
    for cluster in kube_clusters:
        with cluster.api_client() as api:
            versions.add(k8s.VersionApi(api).get_code().git_version)
    assert len(versions) == 1
    if kube_binaries.apiserver.parent.name == KUBE_VERSION:
        assert versions == {KUBE_VERSION}

    ns = kube_namespace()
    first, *others = kube_clusters
    with first.api_client() as api:
        k8s.CoreV1Api(api).create_namespaced_secret(ns, secret("only-in-a", {"k": "v"}))
        assert k8s.CoreV1Api(api).read_namespaced_secret("only-in-a", ns).data is not None
    for cluster in others:
        with cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            assert api_status(partial(core.read_namespaced_secret, "only-in-a", ns)) == 404
            assert "only-in-a" not in names_in(core.list_namespaced_secret(ns))

    # A token of one cluster means nothing to another.
    foreign = first.configuration()
    foreign.host = others[0].server
    foreign.ssl_ca_cert = str(others[0].ca_file)
    with k8s.ApiClient(foreign) as api:
        assert api_status(lambda: k8s.CoreV1Api(api).list_namespaced_secret(ns)) == 401


# --- Secrets ---------------------------------------------------------------------------------


def test_secret_crud_with_label_selectors(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory
) -> None:
    ns = kube_namespace(kube_cluster)
    with kube_cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        core.create_namespaced_secret(
            ns, secret("db", {"password": "p1"}, {"owner": "secretsync", "tier": "data"})
        )
        core.create_namespaced_secret(
            ns, secret("web", {"token": "t1"}, {"owner": "secretsync", "tier": "front"})
        )
        core.create_namespaced_secret(ns, secret("foreign", {"x": "y"}, {"owner": "someone"}))

        def names(selector: str) -> set[str]:
            return names_in(core.list_namespaced_secret(ns, label_selector=selector))

        assert names("owner=secretsync") == {"db", "web"}
        assert names("owner=secretsync,tier in (data)") == {"db"}
        assert names("owner!=secretsync") >= {"foreign"}
        assert names("tier") == {"db", "web"}

        # Read: stringData arrives base64-encoded in data.
        db = core.read_namespaced_secret("db", ns)
        assert db.data == {"password": "cDE="}
        assert db.type == "Opaque"

        # Update with the current resourceVersion, then a stale write gets 409.
        stale = meta(db).resource_version
        db.data = {"password": "cDI="}
        updated = core.replace_namespaced_secret("db", ns, db)
        assert meta(updated).resource_version != stale
        meta(db).resource_version = stale
        assert api_status(lambda: core.replace_namespaced_secret("db", ns, db)) == 409

        # Merge patch of a label moves the object out of a selector.
        core.patch_namespaced_secret("web", ns, {"metadata": {"labels": {"owner": "gone"}}})
        assert names("owner=secretsync") == {"db"}

        # Create of an existing name is 409; delete, then 404.
        assert api_status(lambda: core.create_namespaced_secret(ns, secret("db", {}))) == 409
        core.delete_namespaced_secret("db", ns)
        assert api_status(lambda: core.read_namespaced_secret("db", ns)) == 404
        assert names("owner=secretsync") == set()


def test_server_side_apply_with_field_managers(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory
) -> None:
    ns = kube_namespace(kube_cluster)
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "applied", "namespace": ns, "labels": {"owner": "secretsync"}},
        "type": "Opaque",
        "data": {"key": "djE="},
    }
    with kube_cluster.api_client() as api:
        core = k8s.CoreV1Api(api)

        def apply(body: dict[str, Any], manager: str, *, force: bool = False) -> k8s.V1Secret:
            return core.patch_namespaced_secret(
                "applied", ns, body, field_manager=manager, force=force, _content_type=APPLY
            )

        created = apply(manifest, "secretsync")
        assert created.data == {"key": "djE="}
        managers = {(m.manager, m.operation) for m in meta(created).managed_fields or []}
        assert managers == {("secretsync", "Apply")}

        # Applying the same content again writes nothing.
        again = apply(manifest, "secretsync")
        assert meta(again).resource_version == meta(created).resource_version

        # Another manager setting the same field conflicts ...
        rival = json.loads(json.dumps(manifest))
        rival["data"] = {"key": "cml2YWw="}
        assert api_status(lambda: apply(rival, "someone-else")) == 409
        assert core.read_namespaced_secret("applied", ns).data == {"key": "djE="}

        # ... unless it forces, which moves the field to it.
        taken = apply(rival, "someone-else", force=True)
        assert taken.data == {"key": "cml2YWw="}
        owners = {m.manager for m in meta(taken).managed_fields or [] if m.operation == "Apply"}
        assert "someone-else" in owners

        # A manager that no longer applies a field it alone owns removes it.
        extra = json.loads(json.dumps(manifest))
        extra["data"] = {"key": "cml2YWw=", "second": "Mg=="}
        assert set(apply(extra, "secretsync", force=True).data or {}) == {"key", "second"}
        fewer = json.loads(json.dumps(manifest))
        fewer["data"] = {"key": "cml2YWw="}
        assert set(apply(fewer, "secretsync").data or {}) == {"key"}


# --- RBAC and kubeconfig ---------------------------------------------------------------------


def test_unprivileged_token_gets_403(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory
) -> None:
    ns = kube_namespace(kube_cluster)
    with kube_cluster.api_client(user="unprivileged") as api:
        core = k8s.CoreV1Api(api)
        assert api_status(lambda: core.list_namespaced_secret(ns)) == 403
        assert api_status(lambda: core.create_namespaced_secret(ns, secret("x", {"a": "b"}))) == 403
        assert api_status(lambda: core.read_namespaced_secret("x", ns)) == 403
        # The token is valid (authenticated), just without rights.
        assert k8s.VersionApi(api).get_code().major == "1"


def test_kubeconfig_files_work_with_clients(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, tmp_path: Path
) -> None:
    ns = kube_namespace(kube_cluster)
    admin_path = kube_cluster.kubeconfig(tmp_path / "admin.yaml")
    weak_path = kube_cluster.kubeconfig(tmp_path / "weak.yaml", user="unprivileged")
    assert admin_path.stat().st_mode & 0o077 == 0

    admin: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(admin_path), context=kube_cluster.name
    )
    with admin:
        assert ns in names_in(k8s.CoreV1Api(admin).list_namespace())
    weak: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(weak_path)
    )
    with weak:
        assert api_status(lambda: k8s.CoreV1Api(weak).list_namespaced_secret(ns)) == 403

    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(admin_path), "get", "namespace", ns, "-o", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == f"namespace/{ns}"


# --- CRDs ------------------------------------------------------------------------------------


def widget_crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1},
                                        "note": {"type": "string"},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"ready": {"type": "boolean"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_and_applied_custom_object(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory
) -> None:
    ns = kube_namespace(kube_cluster)
    group = f"w{secrets.token_hex(4)}.infra.secretsync.test"
    crd_name = f"widgets.{group}"
    with kube_cluster.api_client() as api:
        ext = k8s.ApiextensionsV1Api(api)
        custom = k8s.CustomObjectsApi(api)
        ext.create_custom_resource_definition(cast(Any, widget_crd(group)))
        try:

            def established(objects: dict[str, Any]) -> bool:
                crd = objects.get(crd_name)
                conditions = (crd.status.conditions or []) if crd and crd.status else []
                return any(c.type == "Established" and c.status == "True" for c in conditions)

            wait_until(
                ext.list_custom_resource_definition,
                established,
                what=f"CRD {crd_name} established",
                field_selector=f"metadata.name={crd_name}",
            )

            body: dict[str, Any] = {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": "w1", "namespace": ns},
                "spec": {"size": 3, "note": "first"},
            }
            # An apply that creates answers 201, which this client does not parse: read raw.
            resp = custom.patch_namespaced_custom_object(
                group,
                "v1",
                ns,
                "widgets",
                "w1",
                body,
                field_manager="secretsync",
                _content_type=APPLY,
                _preload_content=False,
            )
            status, created = raw_json(resp)
            assert status == 201
            assert created["spec"] == {"size": 3, "note": "first"}
            assert [m["manager"] for m in created["metadata"]["managedFields"]] == ["secretsync"]

            body["spec"]["size"] = 5
            resp = custom.patch_namespaced_custom_object(
                group,
                "v1",
                ns,
                "widgets",
                "w1",
                body,
                field_manager="secretsync",
                _content_type=APPLY,
                _preload_content=False,
            )
            assert raw_json(resp)[0] == 200
            got = cast(
                dict[str, Any],
                custom.get_namespaced_custom_object(group, "v1", ns, "widgets", "w1"),
            )
            assert got["spec"]["size"] == 5

            # The schema is enforced: 422.
            bad = json.loads(json.dumps(body))
            bad["metadata"]["name"] = "w2"
            bad["spec"] = {"size": "big"}
            assert (
                api_status(
                    lambda: custom.create_namespaced_custom_object(group, "v1", ns, "widgets", bad)
                )
                == 422
            )

            # The status subresource: status writes go there, not through the main resource.
            got["status"] = {"ready": True}
            custom.replace_namespaced_custom_object_status(group, "v1", ns, "widgets", "w1", got)
            listed = cast(
                dict[str, Any], custom.list_namespaced_custom_object(group, "v1", ns, "widgets")
            )
            assert [(i["metadata"]["name"], i["status"]["ready"]) for i in listed["items"]] == [
                ("w1", True)
            ]
        finally:
            ext.delete_custom_resource_definition(crd_name)


# --- controller manager ----------------------------------------------------------------------


def test_namespace_deletion_gc_and_service_accounts(
    kube_cluster: KubeCluster, kube_binaries: KubeBinaries, kube_namespace: NamespaceFactory
) -> None:
    assert kube_binaries.controller_manager is not None, (
        "needs kube-controller-manager: run scripts/build-kube.sh or set "
        "SECRETSYNC_KUBE_CONTROLLER_MANAGER"
    )
    ns = kube_namespace(kube_cluster)
    with kube_cluster.api_client() as api:
        core = k8s.CoreV1Api(api)

        # The service-account controllers give each namespace a `default` account and token.
        wait_until(
            core.list_namespaced_secret,
            lambda objs: any(
                s.type == "kubernetes.io/service-account-token" for s in objs.values()
            ),
            what=f"service-account token in {ns}",
            namespace=ns,
        )
        assert name_of(core.read_namespaced_service_account("default", ns)) == "default"

        # Garbage collection follows ownerReferences.
        owner = core.create_namespaced_secret(ns, secret("owner", {"a": "b"}))
        dependent = k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(
                name="dependent",
                owner_references=[
                    k8s.V1OwnerReference(
                        api_version="v1", kind="Secret", name="owner", uid=str(meta(owner).uid)
                    )
                ],
            ),
            data={"k": "v"},
        )
        core.create_namespaced_config_map(ns, dependent)
        core.delete_namespaced_secret("owner", ns)
        wait_until(
            core.list_namespaced_config_map,
            lambda objs: "dependent" not in objs,
            what="dependent ConfigMap collected",
            namespace=ns,
        )

        # Namespace deletion empties and removes the namespace.
        core.create_namespaced_secret(ns, secret("left-behind", {"a": "b"}))
        core.delete_namespace(ns)
        wait_until(
            core.list_namespace,
            lambda objs: ns not in objs,
            what=f"namespace {ns} deleted",
            field_selector=f"metadata.name={ns}",
        )
        assert api_status(lambda: core.read_namespaced_secret("left-behind", ns)) == 404


# --- start and stop --------------------------------------------------------------------------


def test_cluster_starts_pauses_and_stops_cleanly(
    kube_binaries: KubeBinaries, tmp_path: Path
) -> None:
    started = time.monotonic()
    cluster = start_cluster(name="solo", workdir=tmp_path, binaries=kube_binaries)
    elapsed = time.monotonic() - started
    try:
        assert elapsed < 45, f"start took {elapsed:.1f}s"
        assert cluster.data_dir.is_dir()
        assert str(cluster.data_dir).startswith("/dev/shm/")
        pids = cluster.pids
        assert len(pids) == 2  # etcd and kube-apiserver, no controller manager asked for
        assert all(Path(f"/proc/{pid}").exists() for pid in pids)
        with cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            core.create_namespaced_secret("default", secret("probe", {"a": "b"}))
            assert core.read_namespaced_secret("probe", "default").data == {"a": "Yg=="}

        # Paused: connections are accepted, nothing answers; resumed: it answers again.
        config = cluster.configuration()
        config.retries = 0
        with k8s.ApiClient(config) as api:
            core = k8s.CoreV1Api(api)
            cluster.pause()
            try:
                # A timeout on the handshake (new connection) or on the reply (pooled one).
                timeouts = (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.MaxRetryError)
                with pytest.raises(timeouts, match=r"(?i)timed out"):
                    core.list_namespace(_request_timeout=1)
            finally:
                cluster.resume()
            assert "default" in names_in(core.list_namespace(_request_timeout=10))
    finally:
        cluster.stop()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not cluster.data_dir.exists()
    config = cluster.configuration()
    config.retries = 0
    with k8s.ApiClient(config) as api, pytest.raises(urllib3.exceptions.MaxRetryError):
        k8s.CoreV1Api(api).list_namespace(_request_timeout=5)

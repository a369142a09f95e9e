"""The Helm chart installed by the real Helm engine (helm-sdkpy) onto a real kube-apiserver
1.20, then checked as objects: a hardened workload with probes, its own ServiceAccount, a
Service, RBAC without wildcards, API versions picked by Capabilities, kept objects; and the
daemon running with the chart's ServiceAccount token doing its job and nothing more.

No kubelet runs on these clusters: pods never start, so the objects are checked, not pods."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_sdkpy
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.adapters.conftest_kube import NamespaceFactory
from tests.adapters.test_chart import CHART, merged
from tests.support import canary, cli
from tests.support.kubecluster import KubeCluster

RELEASE = "secretsync"


def helm_config(cluster: KubeCluster, namespace: str, tmp: Path) -> helm_sdkpy.Configuration:
    kubeconfig = cluster.kubeconfig(tmp / f"helm-{cluster.name}.yaml")
    return helm_sdkpy.Configuration(namespace=namespace, kubeconfig=str(kubeconfig))


def install(
    cluster: KubeCluster,
    namespace: str,
    tmp: Path,
    values: dict[str, Any] | None = None,
    release: str = RELEASE,
) -> dict[str, Any]:
    """`helm install` (no wait: nothing becomes ready without a kubelet)."""
    config = helm_config(cluster, namespace, tmp)
    result = asyncio.run(
        helm_sdkpy.Install(config).run(release, str(CHART), values=values, wait=False, timeout=60)
    )
    assert isinstance(result, dict)
    assert result["info"]["status"] == "deployed"
    return result


def manifest_docs(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(result["manifest"]) if d]


def kinds(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def assert_no_wildcards(rules: list[Any]) -> None:
    for rule in rules:
        for field in ("api_groups", "resources", "verbs", "resource_names"):
            assert "*" not in (getattr(rule, field, None) or []), rule


def assert_hardened(pod: k8s.V1PodSpec) -> None:
    psc = pod.security_context
    assert psc.run_as_non_root is True
    assert psc.run_as_user and psc.run_as_user > 0
    assert psc.seccomp_profile.type == "RuntimeDefault"
    assert pod.automount_service_account_token is True
    for container in pod.containers:
        sc = container.security_context
        assert sc.run_as_non_root is True
        assert sc.read_only_root_filesystem is True
        assert sc.allow_privilege_escalation is False
        assert sc.privileged is False
        assert sc.capabilities.drop == ["ALL"]
        assert not sc.capabilities.add
        assert sc.seccomp_profile.type == "RuntimeDefault"
        assert container.resources.requests and container.resources.limits
        assert set(container.resources.limits) >= {"cpu", "memory"}
        assert any(m.mount_path == "/tmp" for m in container.volume_mounts)
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["tmp"].empty_dir is not None


def no_secret_material(result: dict[str, Any], secrets: list[str]) -> None:
    """The rendered release holds no Secret data and passes secrets only by reference."""
    for doc in manifest_docs(result):
        if doc["kind"] == "Secret":
            assert "data" not in doc and "stringData" not in doc
    for value in secrets:
        assert value not in result["manifest"]
    sensitive = {"SECRETSYNC_WEBHOOK_SECRET", "SECRETSYNC_HMAC_KEY", "VAULT_TOKEN"}
    for doc in manifest_docs(result):
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for env in container.get("env") or []:
                    if env["name"] in sensitive or "PASSWORD" in env["name"]:
                        assert "value" not in env and "valueFrom" in env, env


# --- default values -------------------------------------------------------------------------


def test_default_install(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, tmp_path: Path
) -> None:
    ns = kube_namespace(kube_cluster, prefix="chart")
    started = time.monotonic()
    result = install(kube_cluster, ns, tmp_path)
    assert time.monotonic() - started < 60
    assert "no fleet repo is configured" in result["info"]["notes"]
    found = kinds(manifest_docs(result))
    assert set(found) == {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "ClusterRole",  # apiAuth (on by default): token reviews, and the status reader role
        "ClusterRoleBinding",
    }
    no_secret_material(result, [])

    with kube_cluster.api_client() as api:
        apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
        deployment = apps.read_namespaced_deployment(RELEASE, ns)
        labels = deployment.metadata.labels
        assert labels["app.kubernetes.io/name"] == "secretsync"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert deployment.spec.replicas == 1
        pod = deployment.spec.template.spec
        assert pod.service_account_name == RELEASE
        assert_hardened(pod)
        daemon = pod.containers[0]
        assert daemon.args[:2] == ["serve", "/git/fleet"]
        assert "--listen=0.0.0.0:8080" in daemon.args
        assert daemon.liveness_probe.http_get.path == "/healthz"
        assert daemon.readiness_probe.http_get.path == "/readyz"
        assert daemon.liveness_probe.http_get.port == "http"
        assert [p.container_port for p in daemon.ports] == [8080]
        assert [c.name for c in pod.containers] == ["secretsync"]  # no git-sync by default
        spread = pod.topology_spread_constraints[0]
        assert spread.label_selector.match_labels["app.kubernetes.io/instance"] == RELEASE

        account = core.read_namespaced_service_account(RELEASE, ns)
        assert account.metadata.labels["app.kubernetes.io/instance"] == RELEASE
        service = core.read_namespaced_service(RELEASE, ns)
        assert service.spec.type == "ClusterIP"
        assert [(p.port, p.target_port) for p in service.spec.ports] == [(8080, "http")]
        assert service.spec.selector == deployment.spec.selector.match_labels
        settings = core.read_namespaced_config_map(f"{RELEASE}-settings", ns)
        assert settings.data["SOPS_DISABLE_VERSION_CHECK"] == "1"
        policy = k8s.NetworkingV1Api(api).read_namespaced_network_policy(RELEASE, ns)
        assert policy.spec.pod_selector.match_labels == deployment.spec.selector.match_labels

        # least privilege: with nothing to deliver into, only its election Leases and Events
        rbac = k8s.RbacAuthorizationV1Api(api)
        selector = f"app.kubernetes.io/instance={RELEASE}"
        roles = rbac.list_namespaced_role(ns, label_selector=selector).items
        assert [r.metadata.name for r in roles] == [f"{RELEASE}-self"]
        assert_no_wildcards(roles[0].rules)
        assert {(tuple(r.resources), tuple(r.verbs)) for r in roles[0].rules} == {
            (("leases",), ("create", "list")),
            (("leases",), ("get", "update")),
            (("events",), ("create", "patch")),
        }
        named = next(r for r in roles[0].rules if r.resource_names)
        assert named.resource_names == ["secretsync-git", "secretsync-shard-0"]
        binding = rbac.read_namespaced_role_binding(f"{RELEASE}-self", ns)
        assert [(s.name, s.namespace) for s in binding.subjects] == [(RELEASE, ns)]
        mine = [
            r
            for r in rbac.list_cluster_role(label_selector=selector).items
            if r.metadata.name.endswith(ns)
        ]
        assert mine == []
        # apiAuth: the daemon may ask who a token is and what it may get, nothing more
        reviews = rbac.read_cluster_role(f"{RELEASE}-{ns}-reviews")
        assert_no_wildcards(reviews.rules)
        assert {(tuple(r.resources), tuple(r.verbs)) for r in reviews.rules} == {
            (("tokenreviews",), ("create",)),
            (("subjectaccessreviews",), ("create",)),
        }
        reader = rbac.read_cluster_role(f"{RELEASE}-{ns}-status-reader")
        assert [(r.non_resource_urls, r.verbs) for r in reader.rules] == [
            (["/v1/status", "/v1/status/*", "/", "/metrics"], ["get"])
        ]
        assert "--api-auth=kubernetes" in daemon.args


def test_schema_refuses_wrong_type_on_install(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, tmp_path: Path
) -> None:
    ns = kube_namespace(kube_cluster, prefix="chart")
    with pytest.raises(helm_sdkpy.InstallError) as refused:
        install(kube_cluster, ns, tmp_path, {"replicaCount": "many"})
    assert "replicaCount" in str(refused.value)
    with kube_cluster.api_client() as api:
        assert k8s.AppsV1Api(api).list_namespaced_deployment(ns).items == []


# --- value sets -----------------------------------------------------------------------------


def test_namespaced_install_with_everything(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, tmp_path: Path
) -> None:
    ns = kube_namespace(kube_cluster, prefix="chart")
    targets = [kube_namespace(kube_cluster, prefix="tgt") for _ in range(2)]
    names = {"hmac": "ss-hmac", "hook": "ss-webhook", "vault": "ss-vault-token"}
    values = {
        "fleet": {"gitSync": {"enabled": True, "repo": "https://git.example/fleet.git"}},
        "secrets": {
            "hmacKey": {"existingSecret": names["hmac"]},
            "webhookSecret": {"existingSecret": names["hook"]},
        },
        "vault": {"address": "https://vault.example:8200", "tokenSecret": {"name": names["vault"]}},
        "rbac": {
            "targetNamespaces": targets,
            "kubeconfigSecrets": ["kc-a", "kc-b"],
            "kinds": {"sealedSecrets": False},
        },
        "podDisruptionBudget": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "sharding": {"enabled": True},
    }
    result = install(kube_cluster, ns, tmp_path, values)
    found = kinds(manifest_docs(result))
    # 1.20 has no policy/v1 and no ServiceMonitor CRD: Capabilities decide
    assert [d["apiVersion"] for d in found["PodDisruptionBudget"]] == ["policy/v1beta1"]
    assert "ServiceMonitor" not in found
    assert "Deployment" not in found
    no_secret_material(result, [])

    with kube_cluster.api_client() as api:
        apps, rbac = k8s.AppsV1Api(api), k8s.RbacAuthorizationV1Api(api)
        workload = apps.read_namespaced_stateful_set(RELEASE, ns)
        pod = workload.spec.template.spec
        assert_hardened(pod)
        assert [c.name for c in pod.containers] == ["secretsync", "git-sync"]
        env = {e.name: e for e in pod.containers[0].env}
        assert env["SECRETSYNC_WEBHOOK_SECRET"].value_from.secret_key_ref.name == names["hook"]
        assert env["VAULT_TOKEN"].value_from.secret_key_ref.name == names["vault"]
        assert env["SECRETSYNC_HMAC_KEY_FILE"].value == "/etc/secretsync/hmac/hmac-key"
        assert {v.name: v.secret.secret_name for v in pod.volumes if v.secret} == {
            "hmac-key": names["hmac"]
        }

        for target in targets:
            role = rbac.read_namespaced_role(f"{RELEASE}-deliver", target)
            assert_no_wildcards(role.rules)
            groups = {g for r in role.rules for g in r.api_groups}
            assert groups == {"", "external-secrets.io"}  # sealedSecrets: false
            for rule in role.rules:
                assert set(rule.verbs) == {"get", "list", "create", "patch", "delete"}
            binding = rbac.read_namespaced_role_binding(f"{RELEASE}-deliver", target)
            assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
                ("ServiceAccount", RELEASE, ns)
            ]
        own = rbac.read_namespaced_role(f"{RELEASE}-self", ns)
        assert_no_wildcards(own.rules)
        secret_rules = [r for r in own.rules if r.resources == ["secrets"]]
        assert [(r.resource_names, r.verbs) for r in secret_rules] == [(["kc-a", "kc-b"], ["get"])]
        lease_rules = [r for r in own.rules if r.resources == ["leases"]]
        assert {tuple(r.verbs) for r in lease_rules} == {("create", "list"), ("get", "update")}
        pdb = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
            "policy", "v1beta1", ns, "poddisruptionbudgets", RELEASE
        )
        assert pdb["spec"]["maxUnavailable"] == 1


SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_service_monitor_when_the_api_exists(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, tmp_path: Path
) -> None:
    ns = kube_namespace(kube_cluster, prefix="chart")
    with kube_cluster.api_client() as api:
        crds = k8s.ApiextensionsV1Api(api)
        crds.create_custom_resource_definition(SERVICE_MONITOR_CRD)
        try:
            deadline = time.monotonic() + 30
            while True:
                crd = crds.read_custom_resource_definition(SERVICE_MONITOR_CRD["metadata"]["name"])
                conditions = {c.type: c.status for c in (crd.status.conditions or [])}
                if conditions.get("Established") == "True":
                    break
                assert time.monotonic() < deadline, "CRD not established"
                time.sleep(0.1)  # poll interval under the deadline above
            result = install(kube_cluster, ns, tmp_path, {"serviceMonitor": {"enabled": True}})
            found = kinds(manifest_docs(result))
            assert len(found["ServiceMonitor"]) == 1
            monitor = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
                "monitoring.coreos.com", "v1", ns, "servicemonitors", RELEASE
            )
            assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        finally:
            crds.delete_custom_resource_definition(SERVICE_MONITOR_CRD["metadata"]["name"])


def test_cluster_wide_rbac_and_kept_objects(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, tmp_path: Path
) -> None:
    ns = kube_namespace(kube_cluster, prefix="chart")
    values = {
        "rbac": {"clusterWide": True, "createNamespaces": True, "rolloutRestart": True},
        "vault": {"tokenReviewer": {"create": True}},
    }
    result = install(kube_cluster, ns, tmp_path, values)
    no_secret_material(result, [])
    reviewer = f"{RELEASE}-vault-reviewer"
    with kube_cluster.api_client() as api:
        rbac, core = k8s.RbacAuthorizationV1Api(api), k8s.CoreV1Api(api)
        role = rbac.read_cluster_role(f"{RELEASE}-{ns}")
        assert_no_wildcards(role.rules)
        resources = {res for r in role.rules for res in r.resources}
        assert resources == {
            "secrets",
            "sealedsecrets",
            "externalsecrets",
            "deployments",
            "statefulsets",
            "daemonsets",
            "namespaces",
        }
        restart = next(r for r in role.rules if "deployments" in r.resources)
        assert restart.verbs == ["patch"]
        binding = rbac.read_cluster_role_binding(f"{reviewer}-{ns}")
        assert binding.role_ref.name == "system:auth-delegator"
        # the token controller fills the reviewer's token Secret; the chart carries none
        deadline = time.monotonic() + 30
        while not (core.read_namespaced_secret(f"{reviewer}-token", ns).data or {}).get("token"):
            assert time.monotonic() < deadline, "reviewer token not filled"
            time.sleep(0.2)  # poll interval under the deadline above

        config = helm_config(kube_cluster, ns, tmp_path)
        asyncio.run(helm_sdkpy.Uninstall(config).run(RELEASE, wait=False, timeout=60))
        with pytest.raises(ApiException) as gone:
            k8s.AppsV1Api(api).read_namespaced_deployment(RELEASE, ns)
        assert gone.value.status == 404
        # kept: Vault's auth config holds this account's JWT
        assert core.read_namespaced_service_account(reviewer, ns).metadata.name == reviewer
        assert core.read_namespaced_secret(f"{reviewer}-token", ns).data["token"]
        # not kept: the cluster-wide grants go with the release (a reinstall restores them)
        for read in (rbac.read_cluster_role_binding, rbac.read_cluster_role):
            name = (
                f"{reviewer}-{ns}" if read is rbac.read_cluster_role_binding else f"{RELEASE}-{ns}"
            )
            with pytest.raises(ApiException) as removed:
                read(name)
            assert removed.value.status == 404


# --- sharded replicas: helm upgrade 1 -> 3 -> 1 shards ---------------------------------------


def upgrade(
    cluster: KubeCluster, namespace: str, tmp: Path, values: dict[str, Any]
) -> dict[str, Any]:
    config = helm_config(cluster, namespace, tmp)
    result = asyncio.run(
        helm_sdkpy.Upgrade(config).run(RELEASE, str(CHART), values=values, wait=False, timeout=60)
    )
    assert isinstance(result, dict)
    assert result["info"]["status"] == "deployed"
    return result


def start_replicas(core: k8s.CoreV1Api, namespace: str, count: int) -> None:
    """Pods as the StatefulSet controller names and labels them (no controller or kubelet runs
    here: they stay Pending, which is all the chart's upgrade check looks at)."""
    for ordinal in range(count):
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {
                    "name": f"{RELEASE}-{ordinal}",
                    "labels": {
                        "app.kubernetes.io/name": "secretsync",
                        "app.kubernetes.io/instance": RELEASE,
                    },
                },
                "spec": {
                    "serviceAccountName": RELEASE,
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "secretsync", "image": "secretsync:test"}],
                },
            },
        )


def stop_replicas(core: k8s.CoreV1Api, namespace: str) -> None:
    selector = f"app.kubernetes.io/instance={RELEASE}"
    core.delete_collection_namespaced_pod(
        namespace, label_selector=selector, grace_period_seconds=0
    )
    deadline = time.monotonic() + 30
    while core.list_namespaced_pod(namespace, label_selector=selector).items:
        assert time.monotonic() < deadline, "pods not gone"
        time.sleep(0.1)  # poll interval under the deadline above


def assert_shards(api: k8s.ApiClient, namespace: str, shards: int) -> None:
    """The installed objects of a release running `shards` shards."""
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    workload = apps.read_namespaced_stateful_set(RELEASE, namespace)
    assert workload.spec.replicas == shards
    assert workload.spec.pod_management_policy == "Parallel"
    assert workload.spec.update_strategy.type == "RollingUpdate"
    assert workload.spec.service_name == f"{RELEASE}-peers"
    args = workload.spec.template.spec.containers[0].args
    assert [a for a in args if a.startswith("--shards=")] == [f"--shards={shards}"]
    polls = [a for a in args if a.startswith("--poll-interval=")]
    assert polls == (["--poll-interval=60"] if shards > 1 else [])

    peers = core.read_namespaced_service(f"{RELEASE}-peers", namespace)
    assert peers.spec.cluster_ip == "None"
    assert peers.spec.publish_not_ready_addresses is True
    assert peers.spec.selector == workload.spec.selector.match_labels
    assert core.read_namespaced_service(RELEASE, namespace).spec.type == "ClusterIP"

    role = k8s.RbacAuthorizationV1Api(api).read_namespaced_role(f"{RELEASE}-self", namespace)
    assert_no_wildcards(role.rules)
    (named,) = [r for r in role.rules if r.resource_names]
    assert named.resources == ["leases"] and named.verbs == ["get", "update"]
    assert named.resource_names == ["secretsync-git"] + [
        f"secretsync-shard-{i}" for i in range(shards)
    ]

    pdbs = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
        "policy", "v1beta1", namespace, "poddisruptionbudgets"
    )["items"]
    if shards > 1:
        (pdb,) = pdbs
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == workload.spec.selector.match_labels
    else:
        assert pdbs == []


def test_upgrade_from_one_shard_to_three_and_back(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, tmp_path: Path
) -> None:
    """`helm upgrade` 1 -> 3 -> 1 shards. A replica writes a cluster only while it holds the
    Lease of the cluster's shard (tests/adapters/test_leases.py runs the replicas); a new count
    re-splits the clusters, so the chart refuses it while replicas of the old count exist."""
    ns = kube_namespace(kube_cluster, prefix="chart")
    one = {"sharding": {"enabled": True, "shards": 1}}
    three = {"sharding": {"enabled": True, "shards": 3}}
    result = install(kube_cluster, ns, tmp_path, one)
    assert "Shards: 1." in result["info"]["notes"]
    with kube_cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        assert_shards(api, ns, 1)

        start_replicas(core, ns, 1)
        with pytest.raises(helm_sdkpy.UpgradeError, match=re.escape("1 shard(s) running, 3 asked")):
            upgrade(kube_cluster, ns, tmp_path, three)
        assert_shards(api, ns, 1)  # nothing changed

        stop_replicas(core, ns)
        result = upgrade(kube_cluster, ns, tmp_path, three)
        assert_shards(api, ns, 3)
        notes = result["info"]["notes"]
        assert "Shards: 3." in notes
        assert "picks it up on its next poll (60 s)" in notes

        # the same count upgrades with its replicas running
        start_replicas(core, ns, 3)
        upgrade(kube_cluster, ns, tmp_path, merged(three, {"daemon": {"interval": 120}}))
        assert_shards(api, ns, 3)
        with pytest.raises(helm_sdkpy.UpgradeError, match=re.escape("3 shard(s) running, 1 asked")):
            upgrade(kube_cluster, ns, tmp_path, one)
        # turning sharding off is a new count too (a Deployment runs one shard)
        with pytest.raises(helm_sdkpy.UpgradeError, match=re.escape("3 shard(s) running, 1 asked")):
            upgrade(kube_cluster, ns, tmp_path, {"sharding": {"enabled": False}})
        assert_shards(api, ns, 3)

        stop_replicas(core, ns)
        upgrade(kube_cluster, ns, tmp_path, one)
        assert_shards(api, ns, 1)


# --- the chart's ServiceAccount at work ----------------------------------------------------


def service_account_token(core: k8s.CoreV1Api, namespace: str, name: str) -> str:
    """The token the 1.20 token controller made for ServiceAccount `name`."""
    deadline = time.monotonic() + 30
    while True:
        for ref in core.read_namespaced_service_account(name, namespace).secrets or []:
            secret = core.read_namespaced_secret(ref.name, namespace)
            if secret.type == "kubernetes.io/service-account-token" and secret.data:
                return base64.b64decode(secret.data["token"]).decode()
        assert time.monotonic() < deadline, "no token for the ServiceAccount"
        time.sleep(0.2)  # poll interval under the deadline above


def token_kubeconfig(cluster: KubeCluster, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "home",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority-data": base64.b64encode(cluster.ca_data).decode(),
                },
            }
        ],
        "users": [{"name": "secretsync", "user": {"token": token}}],
        "contexts": [{"name": "home", "context": {"cluster": "home", "user": "secretsync"}}],
        "current-context": "home",
    }


@pytest.fixture
def daemon_proc(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        cli.stop(proc, graceful_s=30)


def test_daemon_with_the_charts_service_account(
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
    daemon_proc: list[subprocess.Popen[bytes]],
) -> None:
    ns = kube_namespace(kube_cluster, prefix="chart")
    target = kube_namespace(kube_cluster, prefix="tgt")
    other = kube_namespace(kube_cluster, prefix="other")
    install(
        kube_cluster,
        ns,
        tmp_path,
        {"rbac": {"targetNamespaces": [target], "kubeconfigSecrets": ["kc-home"]}},
    )
    value = canary.new("chart")
    with kube_cluster.api_client() as admin_api:
        admin = k8s.CoreV1Api(admin_api)
        token = service_account_token(admin, ns, RELEASE)
        kubeconfig = token_kubeconfig(kube_cluster, token)
        home = tmp_path / "home.kubeconfig"
        home.write_text(yaml.safe_dump(kubeconfig))
        home.chmod(0o600)
        # the remote cluster's kubeconfig Secret (here: the same apiserver, same account)
        admin.create_namespaced_secret(
            ns,
            k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(name="kc-home"),
                string_data={"kubeconfig": yaml.safe_dump(kubeconfig)},
            ),
        )
        admin.create_namespaced_secret(
            ns, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="unrelated"), string_data={"k": "v"})
        )

    fleet = tmp_path / "fleet"
    (fleet / "clusters").mkdir(parents=True)
    (fleet / "secrets").mkdir()
    (fleet / "secretsync.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: chart}\n"
        "spec: {defaults: {delivery: direct}}\n"
    )
    (fleet / "clusters" / "home.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        "metadata: {name: home, labels: {env: test}}\n"
        f"spec: {{kubeconfig: {{secretRef: {{namespace: {ns}, name: kc-home}}}}, "
        f"allowedNamespaces: [{target}]}}\n"
    )
    (fleet / "secrets" / "app.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: app}\n"
        f"spec:\n  clusterSelector: {{}}\n  target: {{name: app, namespace: {target}}}\n"
        f"  data: {{password: {{value: {value}}}}}\n"
    )
    log = tmp_path / "serve.log"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "SECRETSYNC_HMAC_KEY": canary.new("hmac"),
        "KUBECONFIG": str(tmp_path / "absent"),
        # in a pod the Leases live in the pod's namespace: the release namespace
        "SECRETSYNC_LEASE_NAMESPACE": ns,
    }
    daemon_proc.append(
        cli.serve(
            fleet, "--listen", "127.0.0.1:0", "--interval", "600", "--no-git",
            "--home-kubeconfig", str(home), env=env, log=log,
        )
    )  # fmt: skip
    proc = daemon_proc[0]
    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    base = None
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        if base is None:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
            base = f"http://127.0.0.1:{found.group(1)}" if found else None
        if base is not None:
            with urllib.request.urlopen(f"{base}/v1/status", timeout=5) as resp:  # noqa: S310
                status = json.loads(resp.read())
            # a cycle that ran before this replica won its shard's Lease leaves the object
            # pending; the cycle after winning delivers it
            if status.get("lastCycle") and all(
                o["state"] != "pending" for o in status.get("objects", [])
            ):
                break
        time.sleep(0.1)  # poll interval under the deadline above
    states = {(o["cluster"], o["object"]): o["state"] for o in status["objects"]}
    assert states == {("home", f"{target}/app"): "synced"}, status
    assert value not in log.read_text()

    with kube_cluster.api_client() as admin_api:
        delivered = k8s.CoreV1Api(admin_api).read_namespaced_secret("app", target)
        assert base64.b64decode(delivered.data["password"]).decode() == value

    # ... and nothing more with the same token
    user = k8s.Configuration(host=kube_cluster.server)
    user.ssl_ca_cert = str(kube_cluster.ca_file)
    user.api_key = {"authorization": token}
    user.api_key_prefix = {"authorization": "Bearer"}
    with k8s.ApiClient(user) as api:
        core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
        secret = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="x"), string_data={"k": "v"})
        forbidden = [
            lambda: core.create_namespaced_secret(other, secret),
            core.list_secret_for_all_namespaces,
            lambda: core.read_namespaced_secret("unrelated", ns),
            lambda: core.create_namespaced_config_map(
                target, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="x"))
            ),
            lambda: k8s.AppsV1Api(api).patch_namespaced_deployment(RELEASE, ns, {"spec": {}}),
            lambda: core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="x-ns"))),
            lambda: rbac.create_namespaced_role(
                target, k8s.V1Role(metadata=k8s.V1ObjectMeta(name="x"), rules=[])
            ),
        ]
        for attempt in forbidden:
            with pytest.raises(ApiException) as refused:
                attempt()
            assert refused.value.status == 403
        # what it is granted still works with this token
        assert core.read_namespaced_secret("kc-home", ns).metadata.name == "kc-home"
        core.create_namespaced_secret(target, secret)
        core.delete_namespaced_secret("x", target)

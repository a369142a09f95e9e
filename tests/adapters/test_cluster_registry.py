"""`cluster add` fetches the sealing certificate through the API server's service proxy, from a
sealed-secrets-like backend on a test host of our own; `cluster remove` tears down."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from kubernetes import client as k8s

from secretsync.delivery import sealed
from secretsync.fleet import load
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import cli, keys
from tests.support.kubecluster import KubeCluster
from tests.support.netns import network_host

MakeRepo = Callable[[dict[str, str | bytes]], Path]
FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: reg}
spec:
  defaults: {delivery: sealed}
"""


def invoke(*args: str) -> Any:
    return cli.invoke(*args, env={"SECRETSYNC_HMAC_KEY": "reg-key"})


def controller_service(api: k8s.ApiClient, namespace: str, name: str, ip: str, port: int) -> None:
    """A Service whose endpoint is `ip`: the API server proxies only to an address that a Pod
    reports as its IP, so a Pod object (never scheduled) carries it in its status."""
    core = k8s.CoreV1Api(api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": f"{name}-0"},
            "spec": {
                "containers": [{"name": "c", "image": "example.invalid/c:1"}],
                "automountServiceAccountToken": False,
            },
        },
    )
    core.patch_namespaced_pod_status(
        f"{name}-0", namespace, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}
    )
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": port, "targetPort": port}]},
        },
    )
    core.create_namespaced_endpoints(
        namespace,
        {
            "metadata": {"name": name},
            "subsets": [
                {
                    "addresses": [
                        {
                            "ip": ip,
                            "targetRef": {
                                "kind": "Pod",
                                "name": f"{name}-0",
                                "namespace": namespace,
                            },
                        }
                    ],
                    "ports": [{"name": "http", "port": port}],
                }
            ],
        },
    )


def test_cluster_add_fetches_the_certificate_through_the_service_proxy(
    fleet_repo: MakeRepo,
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> None:
    namespace = kube_namespace(kube_cluster, prefix="ctrl")
    pem = keys.cert_pem(keys.rsa_key(7))
    served = tmp_path / "served"
    (served / "v1").mkdir(parents=True)
    (served / "v1" / "cert.pem").write_bytes(pem)
    root = fleet_repo({"secretsync.yaml": FLEET})
    kubeconfig = kube_cluster.kubeconfig(tmp_path / "kc.yaml")
    with network_host() as host:
        host.serve_directory(served, port=8080)
        with kube_cluster.api_client() as api:
            controller_service(api, namespace, "sealed-secrets", host.ip, 8080)
        result = invoke(
            "-o",
            "json",
            "cluster",
            "add",
            "prod-new",
            "-f",
            str(root),
            "--kubeconfig",
            str(kubeconfig),
            "--label",
            "env=prod",
            "--label",
            "region=eu-west-1",
            "--controller-namespace",
            namespace,
            "--controller-name",
            "sealed-secrets",
        )
    assert result.exit_code == 0, result.output
    assert (root / "certs/prod-new.pem").read_bytes() == pem
    fleet = load.load_fleet(root)
    cluster = fleet.clusters["prod-new"]
    assert cluster.labels == {"env": "prod", "region": "eu-west-1"}
    assert sealed.settings(cluster).cert_file == "certs/prod-new.pem"
    pin = hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()
    assert sealed.settings(cluster).cert_sha256 == pin
    assert yaml.safe_load(result.stdout)["certificateSha256"] == pin
    assert cluster.kubeconfig is not None and cluster.kubeconfig.path == str(kubeconfig.resolve())
    again = invoke("cluster", "add", "prod-new", "-f", str(root), "--delivery", "direct")
    assert again.exit_code == 2 and "already registered" in again.stderr


def test_cluster_add_without_controller_changes_nothing(
    fleet_repo: MakeRepo, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    root = fleet_repo({"secretsync.yaml": FLEET})
    kubeconfig = kube_cluster.kubeconfig(tmp_path / "kc.yaml")
    result = invoke(
        "cluster",
        "add",
        "x1",
        "-f",
        str(root),
        "--kubeconfig",
        str(kubeconfig),
        "--controller-namespace",
        "nowhere",
    )
    assert result.exit_code == 1
    assert "no Service nowhere/sealed-secrets-controller" in result.stderr
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["secretsync.yaml"]


def test_cluster_remove_shows_then_deletes_what_secretsync_delivered(
    fleet_repo: MakeRepo,
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> None:
    namespace = kube_namespace(kube_cluster, prefix="rm")
    kubeconfig = kube_cluster.kubeconfig(tmp_path / "kc.yaml")
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET.replace("delivery: sealed", "delivery: direct"),
            "clusters/c.yaml": f"""\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {{name: rm-{namespace}, labels: {{env: dev}}}}
spec:
  kubeconfig: {{path: {kubeconfig}}}
""",
            "secrets/s.yaml": f"""\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {{name: s}}
spec:
  clusterSelector: {{}}
  target: {{name: s, namespace: {namespace}}}
  data: {{a: {{value: literal}}}}
""",
        }
    )
    assert invoke("sync", str(root)).exit_code == 0
    core = k8s.CoreV1Api(kube_cluster.api_client())
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "mine"}, "stringData": {"k": "v"}}
    )
    shown = invoke("-o", "json", "cluster", "remove", f"rm-{namespace}", "-f", str(root))
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.stdout)["wouldDelete"]["api"] == [f"Secret {namespace}/s"]
    assert core.read_namespaced_secret("s", namespace) is not None
    done = invoke("cluster", "remove", f"rm-{namespace}", "-f", str(root), "--yes")
    assert done.exit_code == 0
    names = {s.metadata.name for s in core.list_namespaced_secret(namespace).items}
    assert "s" not in names and "mine" in names


@pytest.fixture(autouse=True)
def _needs_ip_tool() -> None:
    assert shutil.which("ip"), "iproute2 is required (installed by scripts/test)"


def test_refresh_cert_takes_the_renewed_certificate_and_updates_the_pin(
    fleet_repo: MakeRepo,
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> None:
    namespace = kube_namespace(kube_cluster, prefix="renew")
    old_pem, new_pem = keys.cert_pem(keys.rsa_key(7)), keys.cert_pem(keys.rsa_key(8))

    def sha(pem: bytes) -> str:
        cert = x509.load_pem_x509_certificate(pem)
        return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()

    kubeconfig = kube_cluster.kubeconfig(tmp_path / "kc.yaml")
    colons = ":".join(sha(old_pem)[i : i + 2] for i in range(0, 64, 2)).upper()
    cluster_yaml = (
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        "metadata: {name: renewing, labels: {env: prod}}\n"
        "spec:\n  delivery: sealed\n  sealedSecrets:\n    certFile: certs/renewing.pem\n"
        f'    certificateSha256: "{colons}"  # the pin, as openssl prints it\n'
        f"    controller: {{namespace: {namespace}, name: sealed-secrets}}\n"
        f"  kubeconfig: {{path: {kubeconfig}}}\n"
    )
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/renewing.yaml": cluster_yaml,
            "certs/renewing.pem": old_pem,
        }
    )
    served = tmp_path / "served"
    (served / "v1").mkdir(parents=True)
    (served / "v1" / "cert.pem").write_bytes(new_pem)
    expired = keys.cert_pem(
        keys.rsa_key(9),
        not_before=datetime.now(UTC) - timedelta(days=60),
        not_after=datetime.now(UTC) - timedelta(days=30),
    )
    with network_host() as host:
        host.serve_directory(served, port=8080)
        with kube_cluster.api_client() as api:
            controller_service(api, namespace, "sealed-secrets", host.ip, 8080)
        # an expired certificate from the controller is refused: nothing changes
        (served / "v1" / "cert.pem").write_bytes(expired)
        refused = invoke("cluster", "refresh-cert", "renewing", "-f", str(root))
        assert refused.exit_code == 1, refused.output
        assert "expired" in refused.stderr and "nothing was written" in refused.stderr
        assert (root / "certs/renewing.pem").read_bytes() == old_pem
        assert (root / "clusters/renewing.yaml").read_text() == cluster_yaml

        (served / "v1" / "cert.pem").write_bytes(new_pem)
        result = invoke("-o", "json", "cluster", "refresh-cert", "renewing", "-f", str(root))
        assert result.exit_code == 0, result.output
        again = invoke("-o", "json", "cluster", "refresh-cert", "renewing", "-f", str(root))
        # a Cluster that names only its controller: the certificate comes from there
        (root / "clusters/fresh.yaml").write_text(
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            "metadata: {name: fresh, labels: {env: fresh}}\n"
            "spec:\n  delivery: sealed\n"
            f"  sealedSecrets: {{controller: {{namespace: {namespace}, name: sealed-secrets}}}}\n"
            f"  kubeconfig: {{path: {kubeconfig}}}\n"
        )
        (root / "secrets").mkdir()
        (root / "secrets/s.yaml").write_text(
            "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: s}\n"
            "spec:\n  clusterSelector: {matchLabels: {env: fresh}}\n"
            "  target: {name: s, namespace: apps}\n  data: {k: {value: v}}\n"
        )
        valid = invoke("validate", str(root))
        assert valid.exit_code == 0, valid.output
        before = invoke("render", str(root))
        assert before.exit_code == 1
        assert "no sealing certificate at certs/fresh.pem yet" in before.stderr
        assert "cluster refresh-cert fresh" in before.stderr
        first = invoke("cluster", "refresh-cert", "fresh", "-f", str(root))
        assert first.exit_code == 0, first.output
        assert (root / "certs/fresh.pem").read_bytes() == new_pem
        after = invoke("render", str(root))
        assert after.exit_code == 0, after.output
        assert (root / "rendered/fresh/apps/s.yaml").is_file()
    summary = json.loads(result.stdout)
    assert summary["old"]["certificateSha256"] == sha(old_pem)
    assert summary["new"]["certificateSha256"] == sha(new_pem)
    assert summary["changed"] is True and summary["pinUpdated"] is True
    assert (root / "certs/renewing.pem").read_bytes() == new_pem
    new_colons = ":".join(sha(new_pem)[i : i + 2] for i in range(0, 64, 2)).upper()
    assert (root / "clusters/renewing.yaml").read_text() == cluster_yaml.replace(colons, new_colons)
    assert sealed.settings(load.load_fleet(root).clusters["renewing"]).cert_sha256 == sha(new_pem)
    assert again.exit_code == 0 and json.loads(again.stdout)["changed"] is False

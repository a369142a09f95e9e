"""`serve --git-push` renews sealing certificates on a schedule: the controller behind a real
kube-apiserver's service proxy renews its key, and the next due cycle commits the new
certificate, the updated pin and the objects re-sealed for it in one commit."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from secretsync.app import wiring
from secretsync.daemon.service import Daemon
from secretsync.daemon.settings import DaemonSettings
from secretsync.delivery import seal
from secretsync.writeback.push import PushSettings
from tests.adapters.conftest_kube import NamespaceFactory
from tests.adapters.test_cluster_registry import controller_service
from tests.support import canary, keys
from tests.support.gitremote import BareRemote
from tests.support.kubecluster import KubeCluster
from tests.support.netns import network_host

RENDERED = "rendered/renewing/apps/app.yaml"


def sha(pem: bytes) -> str:
    return hashlib.sha256(
        x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    ).hexdigest()


async def test_a_renewed_certificate_is_committed_with_the_objects_sealed_for_it(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, tmp_path: Path
) -> None:
    namespace = kube_namespace(kube_cluster, prefix="renew")
    old_pem, new_pem = keys.cert_pem(keys.rsa_key(7)), keys.cert_pem(keys.rsa_key(8))
    kubeconfig = kube_cluster.kubeconfig(tmp_path / "kc.yaml")
    remote = BareRemote(tmp_path)
    remote.commit(
        {
            "secretsync.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: renew}\n"
                "spec: {output: {dir: rendered}}\n"
            ),
            "clusters/renewing.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
                "metadata: {name: renewing}\n"
                "spec:\n  delivery: sealed\n  sealedSecrets:\n"
                "    certFile: certs/renewing.pem\n"
                f"    certificateSha256: {sha(old_pem)}\n"
                f"    controller: {{namespace: {namespace}, name: sealed-secrets}}\n"
                f"  kubeconfig: {{path: {kubeconfig}}}\n"
            ),
            "certs/renewing.pem": old_pem,
            "secrets/app.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: app}\n"
                "spec:\n  clusterSelector: {}\n  target: {name: app, namespace: apps}\n"
                "  data: {mode: {value: blue}}\n"
            ),
        },
        "fleet",
    )
    checkout = tmp_path / "checkout"
    canary.FLEET_REPOS.append(checkout)
    daemon = Daemon(
        settings=DaemonSettings(
            fleet_path=checkout,
            hmac_key=b"renew-hmac",
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
            interval_s=3600,
            kube=False,
            git_url=remote.url,
            git_timeout_s=30,
            push=PushSettings(cert_refresh_s=3600, backoff_s=0.01),
        ),
        make_sources=wiring.build_sources,
    )
    assert daemon.writeback is not None
    served = tmp_path / "served-cert"
    (served / "v1").mkdir(parents=True)
    (served / "v1" / "cert.pem").write_bytes(old_pem)
    try:
        with network_host() as host:
            host.serve_directory(served, port=8080)
            with kube_cluster.api_client() as api:
                controller_service(api, namespace, "sealed-secrets", host.ip, 8080)
            await daemon.cycle(trigger="start")  # the controller still has the old key
            first = remote.head()
            assert remote.show("main", "certs/renewing.pem").encode() == old_pem
            assert remote.log("-1", "--format=%s").strip() == (
                "secretsync: 1 object(s) in 1 cluster(s)"
            )

            (served / "v1" / "cert.pem").write_bytes(new_pem)  # the controller renews
            await daemon.cycle(trigger="interval")  # not due yet: nothing
            assert remote.head() == first

            daemon.writeback._renew_at = 0.0  # the interval has passed
            await daemon.cycle(trigger="interval")
    finally:
        await daemon._wiring.aclose()
    head = remote.head()
    assert head is not None and head != first
    assert remote.log("--format=%H", f"{first}..main").split() == [head]  # one commit
    assert sorted(remote.log("-1", "--name-only", "--format=").split()) == [
        "certs/renewing.pem",
        "clusters/renewing.yaml",
        RENDERED,
    ]
    assert remote.show("main", "certs/renewing.pem").encode() == new_pem
    assert f"certificateSha256: {sha(new_pem)}" in remote.show("main", "clusters/renewing.yaml")
    manifest = yaml.safe_load(remote.show("main", RENDERED))
    assert seal.unseal_manifest(manifest, [keys.rsa_key(8)])["mode"] == b"blue"
    body = remote.log("-1", "--format=%B")
    assert body.startswith("secretsync: 1 object(s) in 1 cluster(s)\n")
    assert f"certificate renewing: {sha(old_pem)[:16]} -> {sha(new_pem)[:16]}" in body

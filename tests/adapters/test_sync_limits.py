"""V8 through `secretsync sync` (a real process): a 2 MiB value from a real OpenBao for a
`direct` cluster is refused before anything is sent. The apiserver's own request counters
(`apiserver_request_total` on its /metrics) show no write request for it, the other Secret
of the same run is applied, and the error names the object, the limit and the Vault path of
the largest value, never the value."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from kubernetes import client as k8s

from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import apiserver_metrics, canary, cli
from tests.support.kubecluster import KubeCluster
from tests.support.openbao import OpenBao

MakeRepo = Callable[[dict[str, str | bytes]], Path]


def test_a_2_mib_value_sends_no_write_request_and_names_no_value(
    fleet_repo: MakeRepo,
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
    openbao: OpenBao,
    tmp_path: Path,
    unique: str,
) -> None:
    namespace = kube_namespace(kube_cluster)
    small, big = canary.new("small"), canary.new("big")
    openbao.write_kv("secret", f"{unique}/small", {"v": small})
    openbao.write_kv("secret", f"{unique}/big", {"v": big + "x" * (2 * 1024 * 1024)})
    secrets = "---\n".join(
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: {name}}}\nspec:\n  clusterSelector: {{}}\n"
        f"  target: {{name: {name}, namespace: {namespace}}}\n"
        f"  data: {{v: {{vault: {{path: {unique}/{name}, key: v}}}}}}\n"
        for name in ("small", "big")
    )
    root = fleet_repo(
        {
            "secretsync.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: v8}\n"
                "spec:\n  defaults: {delivery: direct}\n"
                f"  sources: {{vault: {{address: '{openbao.address}', auth: {{method: token}}}}}}\n"
            ),
            "clusters/c.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
                f"metadata: {{name: v8-{unique}, labels: {{env: prod}}}}\n"
                f"spec: {{kubeconfig: {{path: {kube_cluster.kubeconfig(tmp_path / 'k.yaml')}}}}}\n"
            ),
            "secrets/all.yaml": secrets,
        }
    )
    env = {**os.environ, "VAULT_TOKEN": openbao.root_token, "SECRETSYNC_HMAC_KEY": "v8-key"}
    before = apiserver_metrics.requests(kube_cluster)
    proc = cli.run("--log-level", "debug", "-o", "json", "sync", str(root), env=env)
    after = apiserver_metrics.requests(kube_cluster)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1, err[-2000:]
    delta = apiserver_metrics.writes(before, after)
    # secretsync writes Secrets with server-side apply only (APPLY); the cluster's own
    # controllers POST and DELETE Secrets meanwhile (service-account tokens, the namespaces
    # earlier tests deleted), so those verbs are not counted here: the report says none
    assert (delta["APPLY"], delta["PATCH"], delta["PUT"]) == (1.0, 0.0, 0.0), delta
    summary = json.loads(out)["summary"]
    assert (summary["apiWrites"], summary["created"], summary["failed"]) == (1, 1, 1), summary
    assert summary["deleted"] == 0, summary
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert failed == [
        f"failed: v8-{unique} {namespace}/big: {namespace}/big: values add up to "
        f"{len(big) + 2 * 1024 * 1024 + 1} bytes, over the 1048576 byte limit of a Secret "
        f"(largest: key 'v', {len(big) + 2 * 1024 * 1024} bytes from vault:secret/{unique}/big#v)"
    ], failed
    with kube_cluster.api_client() as api:
        names = {
            s.metadata.name
            for s in k8s.CoreV1Api(api).list_namespaced_secret(namespace).items
            if (s.metadata.labels or {}).get("app.kubernetes.io/managed-by") == "secretsync"
        }
    assert names == {"small"}
    for text in (out, err):
        assert canary.find_in_text(text) == []
        assert "xxxxxxxx" not in text

"""X5 end to end: odd values from a real OpenBao through `secretsync sync` (a real process at
debug log level) to a real kube-apiserver arrive byte for byte, and no log line holds them."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

from kubernetes import client as k8s

from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import canary, cli
from tests.support.kubecluster import KubeCluster
from tests.support.openbao import OpenBao

MakeRepo = Callable[[dict[str, str | bytes]], Path]


def test_odd_values_are_delivered_byte_for_byte_and_never_logged(
    fleet_repo: MakeRepo,
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
    openbao: OpenBao,
    tmp_path: Path,
    unique: str,
) -> None:
    namespace = kube_namespace(kube_cluster)
    values = canary.odd_values()
    openbao.write_kv("secret", f"{unique}/odd", values)
    data = "\n".join(
        f"    {k}: {{vault: {{path: {unique}/odd, key: {k}}}}}" for k in sorted(values)
    )
    root = fleet_repo(
        {
            "secretsync.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: odd}\n"
                "spec:\n  defaults: {delivery: direct}\n"
                f"  sources: {{vault: {{address: '{openbao.address}', auth: {{method: token}}}}}}\n"
            ),
            "clusters/c.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
                f"metadata: {{name: odd-{unique}, labels: {{env: prod}}}}\n"
                f"spec: {{kubeconfig: {{path: {kube_cluster.kubeconfig(tmp_path / 'k.yaml')}}}}}\n"
            ),
            "secrets/odd.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: odd}\n"
                "spec:\n  clusterSelector: {}\n"
                f"  target: {{name: odd, namespace: {namespace}}}\n  data:\n{data}\n"
            ),
        }
    )
    env = {
        **os.environ,
        "VAULT_TOKEN": openbao.root_token,
        "SECRETSYNC_HMAC_KEY": "odd-key",
        "SECRETSYNC_LOG_LEVEL": "debug",
    }
    outputs: list[bytes] = []
    for _ in range(2):
        proc = cli.run("--log-level", "debug", "-o", "json", "sync", str(root), env=env)
        outputs += [proc.stdout, proc.stderr]
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    first, second = json.loads(outputs[0]), json.loads(outputs[2])
    assert first["summary"]["created"] == 1
    assert second["summary"]["apiWrites"] == 0, "odd values must hash stably"
    with kube_cluster.api_client() as api:
        obj = k8s.CoreV1Api(api).read_namespaced_secret("odd", namespace)
    delivered = {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}
    assert delivered == {k: v.encode("utf-8") for k, v in values.items()}
    assert obj.string_data is None
    for out in outputs:
        assert canary.find_in_text(out.decode("utf-8", "replace")) == []

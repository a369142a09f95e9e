"""Kubeconfig credential plugins against real kube-apiservers, through the real CLI process.

The kubeconfig user's `exec` plugin is a script that leaves a marker file, dumps its
environment and prints an ExecCredential with the cluster's token. secretsync runs with
canaries in `VAULT_TOKEN`, `BAO_TOKEN`, `SOPS_AGE_KEY`, `SECRETSYNC_WEBHOOK_SECRET` and
`SECRETSYNC_HMAC_KEY`. Without `--allow-exec-plugin` the marker never appears and that cluster
fails naming the plugin and the flag while the others are synced; allowed (flag or
`SECRETSYNC_ALLOW_EXEC_PLUGINS`), the plugin's token is what reaches the API server, and its
environment holds no `VAULT_*`, `BAO_*`, `SECRETSYNC_*` or `SOPS_*` name and no canary. The
same for a kubeconfig kept in a `secretRef` Secret of the home cluster.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import canary, cli
from tests.support.kubecluster import KubeCluster

MakeRepo = Callable[[dict[str, str | bytes]], Path]
PLUGIN = "cred-plugin"
SCRUBBED = ("VAULT_", "BAO_", "SECRETSYNC_", "SOPS_")


class Machine:
    """Files of the machine secretsync runs on (outside every fleet repo): the plugin, its
    marker and environment dump, and the kubeconfigs."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "machine"
        self.marker = self.dir / "marker"
        self.dump = self.dir / "plugin-env"
        self.command = self.dir / "bin" / PLUGIN

    def plugin(self, token: str) -> None:
        self.command.parent.mkdir(parents=True, exist_ok=True)
        credential = json.dumps(
            {
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": token},
            }
        )
        self.command.write_text(
            f"#!/bin/sh\ntouch '{self.marker}'\nenv > '{self.dump}'\nprintf '%s' '{credential}'\n"
        )
        self.command.chmod(0o755)

    def exec_kubeconfig(self, cluster: KubeCluster) -> bytes:
        """A kubeconfig whose user authenticates through the plugin (no token of its own)."""
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster.name,
                    "cluster": {
                        "server": cluster.server,
                        "certificate-authority-data": base64.b64encode(cluster.ca_data).decode(),
                    },
                }
            ],
            "users": [
                {
                    "name": "via-plugin",
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1",
                            "command": str(self.command),
                            "args": ["get-token"],
                            "env": [
                                {"name": "PLUGIN_SETTING", "value": "from-kubeconfig"},
                                {"name": "VAULT_ADDR", "value": "http://kubeconfig.example"},
                            ],
                            "interactiveMode": "Never",
                        }
                    },
                }
            ],
            "contexts": [
                {"name": "ctx", "context": {"cluster": cluster.name, "user": "via-plugin"}}
            ],
            "current-context": "ctx",
        }
        return yaml.safe_dump(document).encode()

    def plugin_environment(self) -> dict[str, str]:
        text = self.dump.read_text()
        for value in canary.ISSUED:
            assert value not in text, "a canary reached the plugin's environment"
        names = dict(
            m.groups() for m in re.finditer(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", text, re.M)
        )
        leaked = sorted(n for n in names if n.upper().startswith(SCRUBBED))
        assert not leaked, leaked
        assert names.get("PLUGIN_SETTING") == "from-kubeconfig"  # the kubeconfig's own env
        assert "PATH" in names and "KUBERNETES_EXEC_INFO" in names
        return names


def canary_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(SCRUBBED)}
    return {
        **env,
        "VAULT_TOKEN": canary.new("vault-token"),
        "BAO_TOKEN": canary.new("bao-token"),
        "SOPS_AGE_KEY": canary.new("sops-key"),
        "SECRETSYNC_WEBHOOK_SECRET": canary.new("webhook"),
        "SECRETSYNC_HMAC_KEY": canary.new("hmac"),
    }


def secretsync(*args: str, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    proc = cli.run("-o", "json", *args, env=env, timeout=120, text=True)
    return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr


def secret(cluster: KubeCluster, namespace: str, name: str) -> k8s.V1Secret | None:
    try:
        return k8s.CoreV1Api(cluster.api_client()).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: plugins}
spec:
  defaults: {delivery: direct}
"""


def fleet_secret(namespace: str) -> str:
    return f"""\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {{name: via}}
spec:
  clusterSelector: {{}}
  target: {{name: via, namespace: {namespace}}}
  data: {{mode: {{value: delivered}}}}
"""


def test_exec_plugin_runs_only_when_allowed_and_without_secretsync_credentials(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> None:
    plugged, plain = kube_clusters[0], kube_clusters[1]
    namespace = kube_namespace(plugged, plain)
    machine = Machine(tmp_path)
    machine.plugin(plugged.admin_token)
    kubeconfig = machine.dir / "plugged.yaml"
    kubeconfig.write_bytes(machine.exec_kubeconfig(plugged))
    suffix = secrets.token_hex(3)
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/all.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
                f"metadata: {{name: plugged-{suffix}}}\n"
                f"spec: {{kubeconfig: {{path: {kubeconfig}}}}}\n---\n"
                "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
                f"metadata: {{name: plain-{suffix}}}\n"
                f"spec: {{kubeconfig: {{path: {plain.kubeconfig(machine.dir / 'plain.yaml')}}}}}\n"
            ),
            "secrets/via.yaml": fleet_secret(namespace),
        }
    )
    env = canary_env()

    code, report, err = secretsync("sync", str(root), env=env)
    assert code == 1, err[-2000:]
    reason = report["failedClusters"][f"plugged-{suffix}"]
    assert f"credential plugin '{PLUGIN}' is not allowed" in reason
    assert f"--allow-exec-plugin {PLUGIN}" in reason
    assert list(report["failedClusters"]) == [f"plugged-{suffix}"], "the others proceed"
    assert secret(plain, namespace, "via") is not None
    assert secret(plugged, namespace, "via") is None
    assert not machine.marker.exists(), "the plugin ran without being allowed"

    allowed = {**env, "SECRETSYNC_ALLOW_EXEC_PLUGINS": f"aws,{PLUGIN}"}
    code, report, err = secretsync(
        "plan", "--live", "--cluster", f"plugged-{suffix}", str(root), env=allowed
    )
    assert code == 0, err[-2000:]
    assert machine.marker.exists()
    machine.plugin_environment()
    machine.marker.unlink()
    machine.dump.unlink()

    code, report, err = secretsync("sync", "--allow-exec-plugin", PLUGIN, str(root), env=env)
    assert code == 0, err[-2000:]
    assert machine.marker.exists()
    machine.plugin_environment()
    delivered = secret(plugged, namespace, "via")  # with the token the plugin printed
    assert delivered is not None and delivered.data == {"mode": "ZGVsaXZlcmVk"}


def test_exec_plugin_in_a_kubeconfig_secret_runs_only_when_allowed(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> None:
    home, target = kube_clusters[2], kube_clusters[0]
    namespace = kube_namespace(target)
    holder = kube_namespace(home, prefix="ss")
    machine = Machine(tmp_path)
    machine.plugin(target.admin_token)
    k8s.CoreV1Api(home.api_client()).create_namespaced_secret(
        holder,
        {
            "metadata": {"name": "kubeconfig-target"},
            "data": {"kubeconfig": base64.b64encode(machine.exec_kubeconfig(target)).decode()},
        },
    )
    name = f"via-secret-{secrets.token_hex(3)}"
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/c.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
                f"metadata: {{name: {name}}}\n"
                f"spec: {{kubeconfig: {{secretRef: {{namespace: {holder}, "
                "name: kubeconfig-target}}}\n"
            ),
            "secrets/via.yaml": fleet_secret(namespace),
        }
    )
    home_kubeconfig = str(home.kubeconfig(machine.dir / "home.yaml"))
    env = canary_env()

    code, report, err = secretsync("sync", "--home-kubeconfig", home_kubeconfig, str(root), env=env)
    assert code == 1, err[-2000:]
    reason = report["failedClusters"][name]
    assert f"Secret {holder}/kubeconfig-target key 'kubeconfig'" in reason
    assert f"credential plugin '{PLUGIN}' is not allowed" in reason
    assert f"--allow-exec-plugin {PLUGIN}" in reason
    assert not machine.marker.exists(), "the plugin ran without being allowed"
    assert secret(target, namespace, "via") is None

    code, report, err = secretsync(
        "sync",
        "--home-kubeconfig",
        home_kubeconfig,
        "--allow-exec-plugin",
        PLUGIN,
        str(root),
        env=env,
    )
    assert code == 0, err[-2000:]
    assert machine.marker.exists()
    machine.plugin_environment()
    assert secret(target, namespace, "via") is not None

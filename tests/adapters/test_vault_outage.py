"""V1, Vault down, end to end: Secrets delivered to a real kube-apiserver from a real OpenBao;
with the Vault address refusing connections the next sync fails those objects and writes
nothing (the apiserver's own counters: no apply, no delete), every Secret keeps its value, the
daemon's metrics report the paths as stale; once Vault answers again one sync converges and
the gauge is back to 0."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client as k8s

from secretsync.core.model import VaultAuth, VaultSettings
from secretsync.daemon.metrics import Metrics
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport
from secretsync.fleet import load
from secretsync.kube.clusters import ClientFactory
from secretsync.sinks.kube.sink import KubeSink
from secretsync.sources import vault
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import apiserver_metrics, canary
from tests.support.kubecluster import KubeCluster
from tests.support.openbao import OpenBao

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"vault-outage-hmac-key"
COUNT = 4
QUICK = vault.RetryPolicy(attempts=2, base_delay_s=0.02, max_delay_s=0.1, budget_s=2.0)


def refused_address() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def sync(root: Path, address: str, token: str) -> CycleReport:
    fleet = load.load_fleet(root)
    settings = VaultSettings(address=address, auth=VaultAuth(method="token"))
    source = vault.build_vault_source(settings, env={"VAULT_TOKEN": token}, root=root, retry=QUICK)
    engine = Engine(
        sources={"vault": source},
        sinks=[KubeSink(clients=ClientFactory(root=root), hmac_key=KEY)],
        hmac_key=KEY,
        clock=lambda: datetime.now(UTC),
    )

    async def run() -> CycleReport:
        try:
            return await engine.run_cycle(fleet)
        finally:
            await source.aclose()

    return asyncio.run(run())


def test_vault_down_keeps_every_secret_writes_nothing_and_reports_stale_paths(
    fleet_repo: MakeRepo,
    openbao: OpenBao,
    unique: str,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    tmp_path: Path,
) -> None:
    cluster = kube_clusters[0]
    ns = kube_namespace(cluster)
    values = {i: canary.new(f"outage-{i}") for i in range(COUNT)}
    for i, value in values.items():
        openbao.write_kv("secret", f"{unique}/s{i}", {"v": value})
    kubeconfig = cluster.kubeconfig(tmp_path / "kube.yaml")
    root = fleet_repo(
        {
            "secretsync.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\n"
            "metadata: {name: outage}\nspec: {defaults: {delivery: direct}}\n",
            "clusters/c.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {cluster.name}-{unique}}}\n"
            f"spec: {{kubeconfig: {{path: {kubeconfig}}}}}\n",
            "secrets/all.yaml": "---\n".join(
                "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
                f"metadata: {{name: s{i}}}\nspec:\n  clusterSelector: {{}}\n"
                f"  target: {{name: s{i}, namespace: {ns}}}\n"
                f"  data: {{v: {{vault: {{path: {unique}/s{i}, key: v}}}}}}\n"
                for i in range(COUNT)
            ),
        }
    )
    metrics = Metrics()

    def stale() -> float | None:
        return metrics.registry.get_sample_value("secretsync_stale_paths", {"source": "vault"})

    def delivered() -> dict[int, bytes]:
        with cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            return {
                i: base64.b64decode(core.read_namespaced_secret(f"s{i}", ns).data["v"])
                for i in range(COUNT)
            }

    first = sync(root, openbao.address, openbao.root_token)
    assert first.ok, (first.failures, first.failed_clusters)
    metrics.cycle(first, outcome="ok", trigger="start", seconds=1.0)
    assert stale() == 0
    expected = {i: v.encode() for i, v in values.items()}
    assert delivered() == expected

    before = apiserver_metrics.requests(cluster)
    down = sync(root, refused_address(), openbao.root_token)
    after = apiserver_metrics.requests(cluster)
    assert {i.action for i in down.items} == {"failed"} and len(down.items) == COUNT
    assert all("vault" in i.reason or unique in i.reason for i in down.items), down.items
    assert (down.writes, down.deletes) == (0, 0)
    on_the_wire = apiserver_metrics.writes(before, after)
    assert (on_the_wire["APPLY"], on_the_wire["PATCH"], on_the_wire["DELETE"]) == (0, 0, 0)
    assert delivered() == expected, "last known good kept"
    metrics.cycle(down, outcome="failed", trigger="interval", seconds=1.0)
    assert stale() == COUNT

    again = sync(root, openbao.address, openbao.root_token)
    assert again.ok and again.writes == 0, "the values did not change: nothing to write"
    metrics.cycle(again, outcome="ok", trigger="interval", seconds=1.0)
    assert stale() == 0
    assert delivered() == expected

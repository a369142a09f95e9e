"""`secretsync sync` as a real process: values from a real OpenBao, Secrets on real apiservers.

Covers the CLI end to end, a SIGKILL in the middle of a sync followed by a converging re-run
(P1: at the first write, and at seeded random points with the re-run's writes bounded), and a
second run writing nothing — with debug logs that must hold no value.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client as k8s

from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import apiserver_metrics, canary, cli
from tests.support.kubecluster import KubeCluster
from tests.support.openbao import OpenBao

MakeRepo = Callable[[dict[str, str | bytes]], Path]
SECRETS = 150


def build(
    make: MakeRepo,
    clusters: list[KubeCluster],
    namespace: str,
    bao: OpenBao,
    tmp: Path,
    unique: str,
    values: dict[str, str] | None = None,
    names: str = "",
) -> tuple[Path, dict[str, str]]:
    """A fleet of SECRETS direct Secrets for `clusters` in `namespace`; the Vault values are
    written first unless `values` (written by an earlier call) are given. Cluster names end
    in `names` (default: `unique`): a fleet with other names never prunes this one's Secrets."""
    if values is None:
        values = {}
        for i in range(SECRETS):
            values[f"s{i}"] = canary.new(f"e2e{i}")
            bao.write_kv("secret", f"{unique}/s{i}", {"password": values[f"s{i}"]})
    docs = [
        f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {c.name}-{names or unique}, labels: {{env: prod}}}}\n"
        f"spec: {{kubeconfig: {{path: {c.kubeconfig(tmp / f'{c.name}.yaml')}}}}}\n"
        for c in clusters
    ]
    secrets_yaml = "---\n".join(
        f"apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {{name: s{i}}}\n"
        f"spec:\n  clusterSelector: {{matchLabels: {{env: prod}}}}\n"
        f"  target: {{name: s{i}, namespace: {namespace}}}\n"
        f"  data: {{password: {{vault: {{path: {unique}/s{i}, key: password}}}}}}\n"
        for i in range(SECRETS)
    )
    root = make(
        {
            "secretsync.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: e2e}\n"
                f"spec:\n  defaults: {{delivery: direct}}\n"
                f"  sources: {{vault: {{address: '{bao.address}', auth: {{method: token}}}}}}\n"
            ),
            "clusters/all.yaml": "---\n".join(docs),
            "secrets/all.yaml": secrets_yaml,
        }
    )
    return root, values


def sync(root: Path, bao: OpenBao, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VAULT_TOKEN": bao.root_token,
        "SECRETSYNC_HMAC_KEY": "e2e-key",
        "SECRETSYNC_LOG_LEVEL": "debug",
    }
    return cli.start("-o", "json", "sync", str(root), *extra, env=env)


def owned(cluster: KubeCluster, namespace: str) -> dict[str, bytes]:
    import base64

    items = (
        k8s.CoreV1Api(cluster.api_client())
        .list_namespaced_secret(namespace, label_selector="app.kubernetes.io/managed-by=secretsync")
        .items
    )
    return {s.metadata.name: base64.b64decode(s.data["password"]) for s in items}


def test_sync_killed_midway_converges_on_the_next_run(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    openbao: OpenBao,
    tmp_path: Path,
    unique: str,
) -> None:
    namespace = kube_namespace()
    root, values = build(fleet_repo, kube_clusters, namespace, openbao, tmp_path, unique)
    first = kube_clusters[0]
    proc = sync(root, openbao)
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        count = len(owned(first, namespace))
        if count > 0:
            proc.send_signal(signal.SIGKILL)
            killed_at = count
            break
    proc.wait(timeout=30)
    assert killed_at is not None, "sync finished before it could be killed; raise SECRETS"
    assert proc.returncode == -signal.SIGKILL

    rerun = sync(root, openbao)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    for cluster in kube_clusters:
        delivered = owned(cluster, namespace)
        assert delivered == {k: v.encode() for k, v in values.items()}
    third = sync(root, openbao)
    out3, err3 = third.communicate(timeout=300)
    assert third.returncode == 0
    summary = json.loads(out3)["summary"]
    assert summary["apiWrites"] == 0
    assert summary["unchanged"] == SECRETS * len(kube_clusters)
    assert summary["sourceReads"] == SECRETS, "each unique Vault path read once for 3 clusters"
    for text in (out, err, out3, err3):
        assert canary.find_in_text(text.decode()) == []


def test_sync_killed_at_random_points_converges_with_bounded_writes(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    openbao: OpenBao,
    tmp_path: Path,
    unique: str,
) -> None:
    """P1 over seeded random kill points k: after a SIGKILL once k of the n Secrets exist, the
    re-run writes exactly what is missing (less only what was in flight at the kill), deletes
    nothing, and the apiservers' own counters agree with its report."""
    rng = random.Random(1)
    total = SECRETS * len(kube_clusters)
    values: dict[str, str] | None = None
    kill_points: list[tuple[int, int]] = []
    for run in range(5):
        namespace = kube_namespace()
        root, values = build(
            fleet_repo, kube_clusters, namespace, openbao, tmp_path, unique, values, f"r{run}"
        )
        k = rng.randint(1, total - 1)
        proc = sync(root, openbao)
        deadline = time.monotonic() + 120
        while proc.poll() is None:  # poll the clusters until k Secrets exist, then kill
            assert time.monotonic() < deadline, "sync did not reach k writes in time"
            if sum(len(owned(c, namespace)) for c in kube_clusters) >= k:
                proc.send_signal(signal.SIGKILL)
                break
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"sync finished before k={k}; raise SECRETS"
        delivered = sum(len(owned(c, namespace)) for c in kube_clusters)
        kill_points.append((k, delivered))

        before = [apiserver_metrics.requests(c) for c in kube_clusters]
        rerun = sync(root, openbao)
        out, err = rerun.communicate(timeout=300)
        after = [apiserver_metrics.requests(c) for c in kube_clusters]
        assert rerun.returncode == 0, err.decode()[-2000:]
        summary = json.loads(out)["summary"]
        missing = total - delivered
        in_flight = 8 * len(kube_clusters)  # KubeSink's per-cluster concurrency
        assert missing - in_flight <= summary["apiWrites"] <= missing, (k, delivered, summary)
        assert summary["deleted"] == 0
        on_the_wire = [apiserver_metrics.writes(b, a) for b, a in zip(before, after, strict=True)]
        assert sum(w["APPLY"] for w in on_the_wire) == summary["apiWrites"], on_the_wire
        # DELETE is not counted: the clusters' own controllers delete Secrets of the
        # namespaces earlier tests removed; the report above says secretsync deleted none
        assert all(w["PATCH"] == 0 and w["PUT"] == 0 for w in on_the_wire), on_the_wire
        for cluster in kube_clusters:
            assert owned(cluster, namespace) == {k: v.encode() for k, v in values.items()}
        for text in (out, err):
            assert canary.find_in_text(text.decode()) == []
    assert len({k for k, _ in kill_points}) == 5, kill_points


def test_sync_dry_run_writes_nothing_and_names_a_stopped_cluster(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    openbao: OpenBao,
    tmp_path: Path,
    unique: str,
) -> None:
    namespace = kube_namespace()
    root, _ = build(fleet_repo, kube_clusters[:2], namespace, openbao, tmp_path, unique)
    dry = sync(root, openbao, "--dry-run")
    out, err = dry.communicate(timeout=300)
    assert dry.returncode == 0, err.decode()[-2000:]
    assert json.loads(out)["summary"]["created"] == SECRETS * 2
    assert all(owned(c, namespace) == {} for c in kube_clusters[:2])
    stopped = kube_clusters[1]
    stopped.pause()
    try:
        started = time.monotonic()
        run = sync(root, openbao)
        out, err = run.communicate(timeout=300)
        elapsed = time.monotonic() - started
    finally:
        stopped.resume()
    assert run.returncode == 1
    assert f"failed: cluster {stopped.name}-{unique}" in err.decode()
    assert len(owned(kube_clusters[0], namespace)) == SECRETS
    assert elapsed < 200

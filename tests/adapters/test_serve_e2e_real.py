"""`secretsync serve` end to end on a real OpenBao and three real kube-apiservers.

The daemon runs as a process on 127.0.0.1: it becomes ready and delivers a Vault value to
every cluster; refused webhooks (unsigned, wrong key, stale, future, oversized) change nothing;
a signed rotation webhook reaches every cluster (latency measured and printed); /metrics parses;
nothing it served or logged holds a value; SIGTERM exits 0; a restart on unchanged sources
writes nothing (P3).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from secretsync.daemon import webhook
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import canary, cli, served
from tests.support.kubecluster import KubeCluster
from tests.support.openbao import OpenBao

MakeRepo = Callable[[dict[str, str | bytes]], Path]
SECRET = "rotated"
POLL_S = 0.02  # poll interval inside every deadline loop below


class Daemon(served.ServeClient):
    def sigterm(self, *, timeout: float = 30) -> float:
        started = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        elapsed = time.monotonic() - started
        assert code == 0, f"exit {code}:\n{self.log_text()}"
        assert elapsed < timeout
        return elapsed


@contextmanager
def serve(
    root: Path, bao: OpenBao, log: Path, home: Path, keys: dict[str, str]
) -> Iterator[Daemon]:
    """Start `serve` on 127.0.0.1 (port chosen by the kernel, read from the log: no race for a
    free port); always stopped by PID on the way out. `keys`: the HMAC and webhook keys, the
    same across restarts as in a real deployment."""
    webhook_key = webhook.parse_secret(keys["SECRETSYNC_WEBHOOK_SECRET"])
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "VAULT_TOKEN": bao.root_token,
        **keys,
        "SECRETSYNC_LOG_LEVEL": "debug",
    }
    proc = cli.serve(
        root, "--listen", "127.0.0.1:0", "--interval", "600", "--no-git", "--kube",
        "--no-leader-elect", "--cluster-timeout", "30", env=env, log=log,
    )  # fmt: skip
    daemon = Daemon(proc, log, webhook_key, poll_s=POLL_S)
    try:
        daemon.wait_listening(timeout=60)
        yield daemon
    finally:
        cli.stop(proc)


def read_secret(api: k8s.CoreV1Api, namespace: str) -> tuple[str, str] | None:
    """(value, resourceVersion) of the delivered Secret, or None while it does not exist."""
    try:
        obj = api.read_namespaced_secret(SECRET, namespace, _request_timeout=5)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    value = base64.b64decode((obj.data or {}).get("token", "")).decode()
    return value, obj.metadata.resource_version


def test_serve_delivers_refuses_rotates_and_restarts_quietly(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_namespace: NamespaceFactory,
    openbao: OpenBao,
    tmp_path: Path,
    unique: str,
) -> None:
    assert len(kube_clusters) == 3
    namespace = kube_namespace()
    vault_path = f"{unique}/rot"
    old = canary.new("old")
    openbao.write_kv("secret", vault_path, {"token": old})
    clusters = "---\n".join(
        f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {c.name}-{unique}, labels: {{env: prod}}}}\n"
        f"spec: {{delivery: direct, kubeconfig: {{path: {c.kubeconfig(tmp_path / f'{c.name}.yaml')}}}}}\n"
        for c in kube_clusters
    )
    root = fleet_repo(
        {
            "secretsync.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: e2e-serve}\n"
                "spec:\n  defaults: {delivery: direct}\n"
                f"  sources: {{vault: {{address: '{openbao.address}', auth: {{method: token}}}}}}\n"
            ),
            "clusters/all.yaml": clusters,
            "secrets/all.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
                f"metadata: {{name: {SECRET}}}\n"
                "spec:\n  clusterSelector: {matchLabels: {env: prod}}\n"
                f"  target: {{name: {SECRET}, namespace: {namespace}}}\n"
                f"  data: {{token: {{vault: {{path: {vault_path}, key: token}}}}}}\n"
            ),
        }
    )
    keys = {
        "SECRETSYNC_HMAC_KEY": canary.new("hmac"),
        "SECRETSYNC_WEBHOOK_SECRET": "whsec_"
        + base64.b64encode(canary.new("whsec").encode()).decode(),
    }
    apis = {c.name: k8s.CoreV1Api(c.api_client()) for c in kube_clusters}

    def all_hold(value: str) -> bool:
        return all(
            (got := read_secret(api, namespace)) and got[0] == value for api in apis.values()
        )

    def versions() -> dict[str, str]:
        out = {}
        for name, api in apis.items():
            got = read_secret(api, namespace)
            assert got is not None, f"{SECRET} missing on {name}"
            out[name] = got[1]
        return out

    # --- first daemon: ready, delivered, refused webhooks, signed rotation, SIGTERM ----------
    with serve(root, openbao, tmp_path / "serve1.log", tmp_path, keys) as d:
        d.wait_for(lambda: d.request("/readyz")[0] == 200, timeout=60, what="/readyz 200")
        d.wait_for(lambda: all_hold(old), timeout=60, what="the value on all three clusters")
        d.wait_for(lambda: d.status()["cycles"] >= 1, timeout=60, what="the start cycle")
        assert d.request("/healthz")[0] == 200
        doc = d.status()
        assert {(o["cluster"], o["state"]) for o in doc["objects"]} == {
            (f"{c.name}-{unique}", "synced") for c in kube_clusters
        }, doc["objects"]
        before_rv = versions()
        cycles = d.status()["cycles"]

        refused = json.dumps({"paths": [f"secret/data/{vault_path}", canary.new("refused")]})
        body = refused.encode()
        now = int(time.time())
        assert d.post(body, signed=False) == 401  # unsigned
        assert d.post(body, key=b"not the key") == 401  # wrongly signed
        assert d.post(body, ts=now - 600) == 401  # stale
        assert d.post(body, ts=now + 600) == 401  # future
        huge = json.dumps({"paths": [f"secret/{vault_path}", canary.new("huge") * 3000]})
        assert len(huge) > 64 * 1024
        assert d.post(huge.encode()) == 413  # oversized, correctly signed
        assert d.status()["cycles"] == cycles, "a refused webhook ran a cycle"
        assert versions() == before_rv, "a refused webhook changed a Secret"

        new = canary.new("new")
        openbao.write_kv("secret", vault_path, {"token": new})
        signed = json.dumps({"paths": [f"secret/data/{vault_path}"]}).encode()
        assert d.post(signed) == 202
        accepted = time.monotonic()
        updated: dict[str, float] = {}

        def every_cluster_updated() -> bool:
            for name, api in apis.items():
                if name not in updated and (got := read_secret(api, namespace)) and got[0] == new:
                    updated[name] = time.monotonic()
            return len(updated) == len(apis)

        d.wait_for(every_cluster_updated, timeout=30, what="the rotation on all three clusters")
        latency = max(updated.values()) - accepted
        print(f"webhook 202 -> last of 3 clusters updated: {latency:.3f} s")
        assert latency < 15, f"webhook-to-fleet latency {latency:.3f} s"
        # the rotated Secret is the only change: wait for the webhook cycle to be recorded
        d.wait_for(lambda: d.status()["cycles"] > cycles, timeout=30, what="the webhook cycle")
        last = d.status()["lastCycle"]
        assert last["trigger"] == "webhook", last
        assert last["counts"]["update"] == 3, last
        objects = d.status()["objects"]
        assert len(objects) == 3
        for entry in objects:  # source path and the version delivered, per cluster
            assert entry["versions"] == {f"secret/{vault_path}": "2"}, entry

        code, metrics = d.request("/metrics")
        assert code == 200
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        assert "secretsync_cycles" in families, sorted(families)
        hooks = {
            s.labels["outcome"]: s.value
            for s in families["secretsync_webhooks"].samples
            if s.name == "secretsync_webhooks_total"
        }
        assert hooks.get("unauthorized") == 4, hooks
        assert hooks.get("too_large") == 1, hooks
        for path in ("/v1/status", "/", "/readyz", "/healthz"):
            assert d.request(path)[0] == 200, path

        d.sigterm(timeout=30)
        logged = d.log_text()
        assert "stopped" in logged
        for text in [*d.seen, logged]:
            assert not canary.find_in_text(text), canary.find_in_text(text)

    after_rotation = versions()
    assert all_hold(new)

    # --- P3: a restart on unchanged sources writes nothing --------------------------------
    with serve(root, openbao, tmp_path / "serve2.log", tmp_path, keys) as d2:
        d2.wait_for(lambda: d2.status()["cycles"] >= 1, timeout=60, what="the restart cycle")
        last = d2.status()["lastCycle"]
        assert last["trigger"] == "start" and last["outcome"] == "ok", last
        assert last["counts"]["unchanged"] == 3, json.dumps(last)
        assert last["counts"]["create"] == last["counts"]["update"] == 0, last
        assert versions() == after_rotation, "a restart rewrote a Secret"
        assert d2.request("/readyz")[0] == 200
        d2.sigterm(timeout=30)
        for text in [*d2.seen, d2.log_text()]:
            assert not canary.find_in_text(text), canary.find_in_text(text)

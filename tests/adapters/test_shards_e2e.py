"""Three shard replicas as real `secretsync serve --shards 3` processes on 127.0.0.1, on real
kube-apiservers and a real OpenBao (tests/MATRIX.md row P5).

Leases live on the first apiserver (the home cluster), with 3 s leases. Three fleet clusters,
one per apiserver, are named so that each shard holds one. Each replica process writes with a
ServiceAccount of its own (`writer-<shard>`, and `writer-1b` for the restarted replica of
shard 1), so the apiservers' audit logs say which process wrote what and when.

- a signed webhook sent to replica 0 delivers the rotation to the clusters of all three shards
  within 5 s (forwarded to the peers);
- `/v1/status` from any replica lists every cluster, with its shard;
- SIGKILL of replica 1, restarted at once: its shard's cluster is written by no one until the
  dead replica's Lease expires (replica 0 lists it meanwhile, not as served); then the
  restarted replica takes the Lease and catches the cluster up;
- a replica that stays down is listed by the others, marked unreachable, with its shard;
- the audit logs show each cluster written by one identity at a time.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from secretsync.daemon.sharding import shard_lease, shard_of
from tests.adapters.conftest_kube import NamespaceFactory
from tests.adapters.test_chart_install import service_account_token, token_kubeconfig
from tests.adapters.test_leases import holder
from tests.adapters.test_serve_e2e_real import read_secret
from tests.e2e.test_serve_e2e import MakeRepo
from tests.support import canary, cli
from tests.support.kubecluster import KubeCluster
from tests.support.openbao import OpenBao
from tests.support.served import ServeClient

SHARDS = 3
LEASE_S = 6.0  # --lease-duration: long enough for a restarted process to find it live
RETRY_S = LEASE_S * 2 / 15  # how often a holder renews
SECRET = "rotated"
WRITERS = ("writer-0", "writer-1", "writer-2", "writer-1b")


class Replica(ServeClient):
    """One `serve` process, its shard and the token its status requests carry."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, key: bytes, *, shard: int,
                 reader: str, port: int) -> None:  # fmt: skip
        super().__init__(proc, log, key, base=f"http://127.0.0.1:{port}", poll_s=0.05)
        self.shard = shard
        self.reader = reader

    def get(self, path: str) -> dict[str, Any]:
        code, text = self.request(path, headers={"Authorization": f"Bearer {self.reader}"})
        assert code == 200, (path, code, text[:500])
        doc = json.loads(text)
        assert isinstance(doc, dict)
        return doc

    def kill(self) -> None:
        cli.stop(self.proc)  # SIGKILL, by its PID


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def names_in_every_shard(clusters: list[KubeCluster]) -> list[str]:
    """One fleet cluster name per apiserver (a fresh suffix), together in all three shards."""
    while True:
        suffix = secrets.token_hex(3)
        names = [f"{c.name}-{suffix}" for c in clusters]
        if sorted(shard_of(n, SHARDS) for n in names) == list(range(SHARDS)):
            return names


def writers(cluster: KubeCluster, ns: str) -> dict[str, str]:
    """ServiceAccounts `WRITERS` in `ns`, allowed the chart's delivery verbs on Secrets there
    (`allowedNamespaces` keeps the daemon's lists in it): name -> token."""
    with cluster.api_client() as client:
        core, rbac = k8s.CoreV1Api(client), k8s.RbacAuthorizationV1Api(client)
        for name in WRITERS:
            core.create_namespaced_service_account(
                ns, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name))
            )
        rbac.create_namespaced_role(
            ns,
            k8s.V1Role(
                metadata=k8s.V1ObjectMeta(name="writers"),
                rules=[
                    k8s.V1PolicyRule(
                        api_groups=[""],
                        resources=["secrets"],
                        verbs=["get", "list", "create", "patch", "delete"],
                    )
                ],
            ),
        )
        rbac.create_namespaced_role_binding(
            ns,
            k8s.V1RoleBinding(
                metadata=k8s.V1ObjectMeta(name="writers"),
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="writers"
                ),
                subjects=[
                    k8s.RbacV1Subject(kind="ServiceAccount", name=name, namespace=ns)
                    for name in WRITERS
                ],
            ),
        )
        return {name: service_account_token(core, ns, name) for name in WRITERS}


def audit_writes(cluster: KubeCluster, ns: str) -> list[tuple[str, datetime, datetime]]:
    """(user, received, completed) of every write to Secret `SECRET` in `ns`, in log order."""
    out: list[tuple[str, datetime, datetime]] = []
    for line in cluster.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            event.get("stage") == "ResponseComplete"
            and ref.get("resource") == "secrets"
            and ref.get("namespace") == ns
            and ref.get("name") == SECRET
        ):
            out.append(
                (
                    event["user"]["username"],
                    datetime.fromisoformat(event["requestReceivedTimestamp"]),
                    datetime.fromisoformat(event["stageTimestamp"]),
                )
            )
    return out


@pytest.fixture
def processes() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for r in started:
        r.kill()
    for r in started:
        for text in [*r.seen, r.log_text()]:
            assert not canary.find_in_text(text), canary.find_in_text(text)


def test_three_shard_processes_one_writer_per_cluster(
    fleet_repo: MakeRepo,
    kube_clusters: list[KubeCluster],
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
    openbao: OpenBao,
    unique: str,
    tmp_path: Path,
    processes: list[Replica],
) -> None:
    t_start = time.monotonic()
    ns = kube_namespace()
    lease_ns = kube_namespace(kube_cluster, prefix="lease")
    names = names_in_every_shard(kube_clusters)
    by_shard = {shard_of(n, SHARDS): (n, c) for n, c in zip(names, kube_clusters, strict=True)}
    tokens = {c.name: writers(c, ns) for c in kube_clusters}
    vault_path = f"{unique}/shards"
    openbao.write_kv("secret", vault_path, {"token": (value := canary.new("v1"))})
    home = kube_cluster.kubeconfig(tmp_path / "home.yaml")
    reader = canary.new("reader")
    (tmp_path / "tokens").write_text(reader + "\n")
    key = canary.new("whsec").encode()
    ports = [_free_port() for _ in range(SHARDS)]
    keys = {
        "VAULT_TOKEN": openbao.root_token,
        "SECRETSYNC_HMAC_KEY": canary.new("hmac"),
        "SECRETSYNC_WEBHOOK_SECRET": base64.b64encode(key).decode(),
        "SECRETSYNC_LOG_LEVEL": "debug",
    }

    def fleet_for(writer: str) -> Path:
        docs = []
        for name, c in zip(names, kube_clusters, strict=True):
            kubeconfig = tmp_path / f"{writer}-{c.name}.yaml"
            kubeconfig.write_text(yaml.safe_dump(token_kubeconfig(c, tokens[c.name][writer])))
            docs.append(
                "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
                f"metadata: {{name: {name}}}\n"
                f"spec: {{allowedNamespaces: [{ns}], kubeconfig: {{path: {kubeconfig}}}}}\n"
            )
        return fleet_repo(
            {
                "secretsync.yaml": (
                    "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\n"
                    "metadata: {name: shards-e2e}\nspec:\n  defaults: {delivery: direct}\n"
                    f"  sources: {{vault: {{address: '{openbao.address}', "
                    "auth: {method: token}}}\n"
                ),
                "clusters/all.yaml": "---\n".join(docs),
                "secrets/all.yaml": (
                    "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
                    f"metadata: {{name: {SECRET}}}\n"
                    "spec:\n  clusterSelector: {}\n"
                    f"  target: {{name: {SECRET}, namespace: {ns}}}\n"
                    f"  data: {{token: {{vault: {{path: {vault_path}, key: token}}}}}}\n"
                ),
            }
        )

    def start(shard: int, writer: str) -> Replica:
        work = tmp_path / writer
        work.mkdir()
        log = work / "serve.log"
        peers = [
            a
            for i, p in enumerate(ports)
            if i != shard
            for a in ("--peer", f"http://127.0.0.1:{p}")
        ]
        args = [
            "--listen", f"127.0.0.1:{ports[shard]}", "--interval", "600", "--no-git", "--kube",
            "--shards", str(SHARDS), "--shard-index", str(shard), "--home-kubeconfig", str(home),
            "--lease-namespace", lease_ns, "--lease-duration", str(LEASE_S), "--no-events",
            "--cluster-timeout", "20", "--api-token-file", str(tmp_path / "tokens"), *peers,
        ]  # fmt: skip
        env = cli.bare_env(work, HOSTNAME=writer, **keys)
        proc = cli.serve(fleet_for(writer), *args, env=env, log=log)
        replica = Replica(proc, log, key, shard=shard, reader=reader, port=ports[shard])
        processes.append(replica)
        return replica

    def holds(shards: list[int], want: str) -> bool:
        for s in shards:
            _, c = by_shard[s]
            with c.api_client() as client:
                got = read_secret(k8s.CoreV1Api(client), ns)
            if got is None or got[0] != want:
                return False
        return True

    replicas = [start(i, f"writer-{i}") for i in range(SHARDS)]
    for r in replicas:
        r.wait_listening(timeout=60)
    r0 = replicas[0]
    r0.wait_for(lambda: holds([0, 1, 2], value), timeout=30, what="the start cycles' writes")

    # --- a webhook to replica 0 reaches the clusters of all three shards ----------------------
    openbao.write_kv("secret", vault_path, {"token": (value := canary.new("v2"))})
    body = json.dumps({"paths": [f"secret/data/{vault_path}"]}).encode()
    assert r0.post(body) == 202
    accepted = time.monotonic()
    r0.wait_for(lambda: holds([0, 1, 2], value), timeout=5, what="the rotation on every shard")
    print(f"webhook 202 -> clusters of 3 shards updated: {time.monotonic() - accepted:.3f} s")

    # --- any replica lists every cluster, with its shard ---------------------------------------
    for r in replicas:
        doc = r.get("/v1/status")
        clusters = {c["name"]: c for c in doc["clusters"]}
        assert set(clusters) == set(names), r.shard
        for name in names:
            assert clusters[name]["shard"] == shard_of(name, SHARDS)
            assert clusters[name]["reachable"] is True
            assert clusters[name]["replica"].startswith(f"writer-{shard_of(name, SHARDS)}_")
        assert {(o["cluster"], o["state"]) for o in doc["objects"]} == {
            (n, "synced") for n in names
        }
        assert [(x["shard"], x["reachable"], x["leading"]) for x in doc["replicas"]] == [
            (s, True, True) for s in range(SHARDS)
        ]
        local = r.get("/v1/status?scope=local")
        assert [c["name"] for c in local["clusters"]] == [by_shard[r.shard][0]]

    # --- SIGKILL replica 1, restarted at once: it waits for the dead one's Lease to expire ----
    home_api = kube_cluster.endpoint()
    dead = holder(home_api, lease_ns, shard_lease(1))
    assert dead is not None and dead.startswith("writer-1_")
    replicas[1].kill()
    killed_at, killed_wall = time.monotonic(), datetime.now().astimezone()
    restarted = start(1, "writer-1b")
    openbao.write_kv("secret", vault_path, {"token": (value := canary.new("v3"))})
    assert r0.post(body) == 202
    r0.wait_for(lambda: holds([0, 2], value), timeout=5, what="the rotation on shards 0 and 2")
    restarted.wait_listening(timeout=60)
    while not holds([1], value):
        # until it is taken over: held by the dead replica, listed by replica 0, not as served
        lease = holder(home_api, lease_ns, shard_lease(1))
        if lease != dead:
            break
        assert time.monotonic() - killed_at < LEASE_S + 20, "shard 1 never taken over"
        doc = r0.get("/v1/status")
        entry = next(c for c in doc["clusters"] if c["name"] == by_shard[1][0])
        replica = next(x for x in doc["replicas"] if x["shard"] == 1)
        assert entry["shard"] == 1
        fetched = datetime.fromisoformat(entry["fetchedAt"]) if entry["fetchedAt"] else None
        if fetched is not None and fetched >= killed_wall + timedelta(seconds=1):
            # an answer from after the kill (answers are cached 5 s): not served by anyone
            assert not (entry["reachable"] and replica["leading"]), (entry, replica)
        time.sleep(0.1)  # poll interval under the deadline above
    took = time.monotonic() - killed_at
    # not before the Lease expired (the dead holder renewed at most one retry before the kill)
    assert took >= LEASE_S - RETRY_S - 0.3, took
    r0.wait_for(lambda: holds([1], value), timeout=20, what="the restarted replica's write")
    new = holder(home_api, lease_ns, shard_lease(1))
    assert new is not None and new.startswith("writer-1b_"), new
    print(f"SIGKILL -> shard 1's Lease taken by the restarted replica: {took:.3f} s")

    def every_replica_sees_every_shard() -> bool:
        for r in (r0, replicas[2], restarted):
            doc = r.get("/v1/status")
            if {c["name"] for c in doc["clusters"]} != set(names):
                return False
            if not all(x["reachable"] and x["leading"] for x in doc["replicas"][:SHARDS]):
                return False
        return True

    r0.wait_for(every_replica_sees_every_shard, timeout=15, what="the fleet-wide status healed")

    # --- a replica that is down is shown as such, with its shard -----------------------------
    replicas[2].kill()

    def shard_2_unreachable() -> bool:
        doc = r0.get("/v1/status")
        entry = next(c for c in doc["clusters"] if c["name"] == by_shard[2][0])
        return entry["reachable"] is False

    r0.wait_for(shard_2_unreachable, timeout=15, what="replica 0 to see shard 2 unreachable")
    doc = r0.get("/v1/status")
    assert {c["name"] for c in doc["clusters"]} == set(names)  # listed, not dropped
    gone = next(x for x in doc["replicas"] if x["shard"] == 2)
    assert gone["reachable"] is False and gone["error"] == "connection refused or unreachable"
    assert {(o["cluster"], o["state"]) for o in doc["objects"]} == {
        (n, "synced") for n in names
    }  # its last answer, marked with the time it was fetched

    # --- the audit logs: each cluster written by one identity at a time -----------------------
    for s, (name, c) in by_shard.items():
        writes = audit_writes(c, ns)
        users = {u.rsplit(":", 1)[1] for u, _, _ in writes}
        if s != 1:
            assert users == {f"writer-{s}"}, (name, writes)
            continue
        assert users == {"writer-1", "writer-1b"}, (name, writes)
        first = [w for w in writes if w[0].endswith(":writer-1")]
        second = [w for w in writes if w[0].endswith(":writer-1b")]
        assert max(done for _, _, done in first) < killed_wall
        # the restarted replica, started at once, wrote only after the dead one's Lease expired
        gap = (min(received for _, received, _ in second) - killed_wall).total_seconds()
        assert gap >= LEASE_S - RETRY_S - 0.3, gap
    runtime = time.monotonic() - t_start
    print(f"three-shard e2e: {runtime:.1f} s")
    assert runtime < 60, runtime

"""`secretsync serve --git-url URL --git-push` end to end, as a process, with a real OpenBao and
a real Git remote: a KV v2 rotation and a signed webhook become one pushed commit (latency
measured and printed) whose SealedSecret opens with the cluster's key to the new value; a second
webhook with nothing changed makes no commit; SIGKILL while the push is in flight (the commit
made, the push not landed), then a restart, converges on one correct commit; neither the
remote's whole history nor the daemon's log holds a value."""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from secretsync.daemon import webhook
from secretsync.delivery import seal
from tests.support import canary, cli, keys, served
from tests.support.gitremote import BareRemote
from tests.support.openbao import OpenBao

POLL_S = 0.02  # poll interval inside every deadline loop below
RENDERED = "rendered/one/apps/db.yaml"


@contextmanager
def serve(
    checkout: Path, url: str, bao: OpenBao, log: Path, env: dict[str, str]
) -> Iterator[served.ServeClient]:
    """`serve` on 127.0.0.1 (port read from the log); always stopped by PID on the way out."""
    proc = cli.serve(
        checkout, "--listen", "127.0.0.1:0", "--interval", "600", "--no-kube",
        "--no-leader-elect", "--git-url", url, "--git-push",
        "--git-author", "secretsync <secretsync@example.invalid>",
        env={"PATH": os.environ["PATH"], "HOME": str(checkout.parent),
             "VAULT_TOKEN": bao.root_token, "SECRETSYNC_LOG_LEVEL": "debug", **env},
        log=log, append=True,
    )  # fmt: skip
    key = webhook.parse_secret(env["SECRETSYNC_WEBHOOK_SECRET"])
    client = served.ServeClient(proc, log, key, poll_s=POLL_S)
    try:
        client.wait_listening(timeout=60, since=len(log.read_text(errors="replace")))
        yield client
    finally:
        cli.stop(proc)


def pushed_value(remote: BareRemote) -> str | None:
    try:
        manifest = yaml.safe_load(remote.show("main", RENDERED))
    except subprocess.CalledProcessError:
        return None
    return seal.unseal_manifest(manifest, [keys.rsa_key(0)])["password"].decode()


def landed_value(remote: BareRemote, value: str) -> bool:
    return pushed_value(remote) == value


def test_rotation_webhook_becomes_one_pushed_commit_and_a_kill_converges(
    openbao: OpenBao, tmp_path: Path, unique: str
) -> None:
    path = f"{unique}/db"
    first = canary.new("first")
    openbao.write_kv("secret", path, {"password": first})
    remote = BareRemote(tmp_path)
    remote.commit(
        {
            "secretsync.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: wb}\n"
                "spec:\n  output: {dir: rendered}\n"
                f"  sources: {{vault: {{address: '{openbao.address}', auth: {{method: token}}}}}}\n"
            ),
            "clusters/one.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
                "metadata: {name: one, labels: {env: prod}}\n"
                "spec: {delivery: sealed, sealedSecrets: {certFile: certs/one.pem}}\n"
            ),
            "certs/one.pem": keys.cert_pem(keys.rsa_key(0)),
            "secrets/db.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: db}\n"
                "spec:\n  clusterSelector: {}\n  target: {name: db, namespace: apps}\n"
                f"  data: {{password: {{vault: {{path: {path}, key: password}}}}}}\n"
            ),
        },
        "fleet",
    )
    checkout = tmp_path / "checkout"
    canary.FLEET_REPOS.append(checkout)
    log = tmp_path / "serve.log"
    env = {
        "SECRETSYNC_HMAC_KEY": "writeback-e2e-hmac",
        "SECRETSYNC_WEBHOOK_SECRET": "whsec_"
        + base64.b64encode(b"writeback-e2e-webhook-key").decode(),
    }
    body = json.dumps({"paths": [f"secret/{path}"]}).encode()

    def commits_by_us() -> int:
        return remote.log("--format=%an", "main").split().count("secretsync")

    with serve(checkout, remote.url, openbao, log, env) as daemon:
        daemon.wait_for(lambda: pushed_value(remote) == first, timeout=60, what="first push")
        assert commits_by_us() == 1

        latencies = []
        for _ in range(20):
            value = canary.new("rotated")
            openbao.write_kv("secret", path, {"password": value})
            before = commits_by_us()
            t0 = time.monotonic()
            assert daemon.post(body) == 202
            landed = daemon.wait_for(
                functools.partial(landed_value, remote, value), timeout=10, what="the push"
            )
            latencies.append(landed - t0)
            assert commits_by_us() == before + 1
        latencies.sort()
        print(
            f"webhook -> pushed commit: median {latencies[len(latencies) // 2] * 1000:.0f} ms,"
            f" max {latencies[-1] * 1000:.0f} ms over {len(latencies)} rotations (deadline 10 s each)"
        )
        head = remote.head()
        message = remote.log("-1", "--format=%B", "main")
        assert message.startswith("secretsync: 1 object(s) in 1 cluster(s)\n\none apps/db: updated")
        assert f"secret/{path}: " in message  # the version change, e.g. "3 -> 4"

        # a second webhook with nothing changed: a cycle, no commit
        cycles = daemon.cycles()
        assert daemon.post(body) == 202
        daemon.wait_for(lambda: daemon.cycles() > cycles, timeout=10, what="no-op cycle")
        assert remote.head() == head
        status = daemon.status()
        assert status["lastPush"]["result"] == "ok"
        assert status["objects"][0]["pushed"] is True
        last = value

        # SIGKILL while the push is in flight: committed in the checkout, not on the remote
        remote.hold()
        killed = canary.new("killed")
        openbao.write_kv("secret", path, {"password": killed})
        assert daemon.post(body) == 202
        daemon.wait_for(remote.push_arrived, timeout=10, what="the push to arrive")
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait(timeout=10)
        remote.verdict("reject")
    assert remote.head() == head
    assert pushed_value(remote) == last
    remote.no_hooks()

    before = commits_by_us()
    with serve(checkout, remote.url, openbao, log, env) as daemon:
        daemon.wait_for(lambda: pushed_value(remote) == killed, timeout=60, what="convergence")
        cycles = daemon.cycles()
        daemon.wait_for(lambda: daemon.cycles() >= cycles, timeout=10, what="status")
    assert commits_by_us() == before + 1  # one commit: nothing lost, nothing duplicated
    assert remote.log("-1", "--format=%P", "main").strip() == head

    history = remote.log("-p", "--all")
    text = canary.keep("remote history", history)
    assert not canary.find_in_text(text)
    assert not canary.find_in_text(canary.keep("serve log", log.read_text(errors="replace")))

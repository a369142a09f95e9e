"""Webhook forwarding between real `secretsync serve` processes on 127.0.0.1 (`--peer`): a
webhook sent to replica A makes replica B run a narrowed cycle for the same paths; B does not
send it back; a peer that never answers is counted as failed and does not hold up A's 202."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_serve_e2e import CLUSTERS, FLEET, SECRETS, MakeRepo
from tests.support import canary, cli, keys
from tests.support.served import ServeClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _counter(metrics: str, name: str, outcome: str) -> float:
    found = re.search(rf'^{name}_total{{outcome="{outcome}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """A port that accepts connections and never answers: a hung replica."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def replicas(
    fleet_repo: MakeRepo, tmp_path: Path, silent_peer: str
) -> Iterator[tuple[ServeClient, ServeClient]]:
    key = canary.new("whsec-peers").encode()
    ports = {"a": _free_port(), "b": _free_port()}
    peers = {
        "a": [f"http://127.0.0.1:{ports['b']}", silent_peer],
        "b": [f"http://127.0.0.1:{ports['a']}"],
    }
    procs: list[subprocess.Popen[bytes]] = []
    clients: list[ServeClient] = []
    try:
        for name in ("a", "b"):
            root = fleet_repo(  # a repo per replica: each renders into its own output
                {
                    "secretsync.yaml": FLEET,
                    "clusters/all.yaml": CLUSTERS,
                    "secrets/all.yaml": SECRETS,
                    "certs/sealed-prod.pem": keys.cert_pem(keys.rsa_key(0)),
                }
            )
            work = tmp_path / name
            work.mkdir()
            log = work / "serve.log"
            env = {
                "PATH": os.environ["PATH"],
                "HOME": str(work),
                "SECRETSYNC_HMAC_KEY": canary.new("hmac"),
                "SECRETSYNC_WEBHOOK_SECRET": base64.b64encode(key).decode(),
                "SECRETSYNC_LOG_LEVEL": "debug",
            }
            args = ["--listen", f"127.0.0.1:{ports[name]}", "--interval", "600", "--no-kube"]
            if name == "a":
                args += [a for url in peers["a"] for a in ("--peer", url)]
            else:  # the environment form, as a chart may set it
                env["SECRETSYNC_PEERS"] = ",".join(peers["b"])
            proc = cli.serve(root, *args, env=env, log=log)
            procs.append(proc)
            client = ServeClient(proc, log, key)
            client.wait_listening(timeout=30)
            clients.append(client)
        yield clients[0], clients[1]
    finally:
        for proc in procs:
            cli.stop(proc)
    for client in clients:
        for text in [*client.seen, client.log_text()]:
            assert not canary.find_in_text(text), canary.find_in_text(text)


def test_webhook_reaches_the_peer_once(replicas: tuple[ServeClient, ServeClient]) -> None:
    a, b = replicas
    for replica in (a, b):
        replica.wait_for(lambda r=replica: r.cycles() >= 1, timeout=30, what="the start cycle")
    b_before = b.cycles()

    body = json.dumps({"paths": ["/secret/data/web/prod/", "secret/data/web/prod"]}).encode()
    assert a.post(body) == 202
    # answered while the forward to the silent peer is still waiting for its timeout
    assert _counter(a.request("/metrics")[1], "secretsync_webhook_forwards", "failed") == 0

    b.wait_for(lambda: b.cycles() > b_before, timeout=5, what="B's cycle for A's webhook")
    doc = b.status()
    assert doc["lastCycle"]["trigger"] == "webhook"
    assert doc["lastCycle"]["counts"]["unchanged"] == 1  # only ext-prod's api-token
    assert "(forwarded by a peer)" in b.log_text()

    a.wait_for(
        lambda: _counter(a.request("/metrics")[1], "secretsync_webhook_forwards", "failed") == 1,
        timeout=10,
        what="the silent peer's forward to time out",
    )
    a_metrics, b_metrics = a.request("/metrics")[1], b.request("/metrics")[1]
    assert _counter(a_metrics, "secretsync_webhook_forwards", "sent") == 1
    assert _counter(b_metrics, "secretsync_webhook_forwards", "sent") == 0  # not sent back
    assert _counter(b_metrics, "secretsync_webhook_forwards", "failed") == 0
    assert _counter(a_metrics, "secretsync_webhooks", "accepted") == 1  # nothing came back
    assert _counter(b_metrics, "secretsync_webhooks", "accepted") == 1
    assert "webhook forward to " + a.base not in a.log_text()
    assert re.search(r"webhook forward to http://127\.0\.0\.1:\d+ failed: no answer", a.log_text())

"""`secretsync serve` as a real process on 127.0.0.1: a small fleet of external and sealed
clusters rendered into Git (no Vault or Kubernetes needed), the HTTP surface, signed and
refused webhooks, SIGTERM, and a canary scan of everything it served and logged."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import canary, cli, keys
from tests.support.served import ServeClient

MakeRepo = Callable[[dict[str, str | bytes]], Path]

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: e2e}
spec:
  defaults: {delivery: external}
  output: {dir: rendered}
"""

CLUSTERS = """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {name: ext-prod, labels: {env: prod, kind: ext}}
spec: {delivery: external}
---
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {name: ext-staging, labels: {env: staging, kind: ext}}
spec: {delivery: external}
---
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {name: sealed-prod, labels: {env: prod, kind: sealed}}
spec: {delivery: sealed, sealedSecrets: {certFile: certs/sealed-prod.pem}}
"""

SECRETS = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: app-config}
spec:
  clusterSelector: {matchLabels: {kind: sealed}}
  target: {name: app-config, namespace: apps}
  data:
    mode: {value: "blue-{{ cluster.labels.env }}"}
---
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: api-token}
spec:
  clusterSelector: {matchLabels: {kind: ext}}
  target: {name: api-token, namespace: apps}
  data:
    token: {vault: {path: "web/{{ cluster.labels.env }}", key: token}}
"""


@pytest.fixture
def served(fleet_repo: MakeRepo, tmp_path: Path) -> Iterator[ServeClient]:
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/all.yaml": CLUSTERS,
            "secrets/all.yaml": SECRETS,
            "certs/sealed-prod.pem": keys.cert_pem(keys.rsa_key(0)),
        }
    )
    webhook_key = canary.new("whsec-k")  # 47 bytes: its base64 ends in one `=`, dropped below
    webhook_secret = "whsec_" + base64.b64encode(webhook_key.encode()).decode().rstrip("=")
    log = tmp_path / "serve.log"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "SECRETSYNC_HMAC_KEY": canary.new("hmac"),
        "SECRETSYNC_WEBHOOK_SECRET": webhook_secret,
        "SECRETSYNC_LOG_LEVEL": "debug",
    }
    proc = cli.serve(
        root, "--listen", "127.0.0.1:0", "--interval", "600", "--no-kube", env=env, log=log
    )
    try:
        client = ServeClient(proc, log, webhook_key.encode())
        client.wait_listening(timeout=30)
        yield client
    finally:
        cli.stop(proc)


def test_serve_end_to_end(served: ServeClient) -> None:
    served.wait_for(lambda: served.cycles() >= 1, timeout=30, what="the start cycle")
    assert served.request("/healthz")[0] == 200
    status, ready = served.request("/readyz")
    assert status == 200, ready
    status, text = served.request("/v1/status")
    doc = json.loads(text)
    assert {(o["cluster"], o["fleetSecret"], o["state"]) for o in doc["objects"]} == {
        ("ext-prod", "api-token", "synced"),
        ("ext-staging", "api-token", "synced"),
        ("sealed-prod", "app-config", "synced"),
    }
    status, page = served.request("/")
    assert status == 200 and 'data-state="synced"' in page
    status, metrics = served.request("/metrics")
    assert 'secretsync_cycles_total{outcome="ok",trigger="start"} 1.0' in metrics

    before = served.cycles()
    leak = canary.new("in-body")
    assert served.post(json.dumps({"paths": ["secret/data/web/prod", f"x/{leak}"]}).encode()) == 202
    served.wait_for(lambda: served.cycles() > before, timeout=10, what="the webhook cycle")
    doc = json.loads(served.request("/v1/status")[1])
    assert doc["lastCycle"]["trigger"] == "webhook"
    assert doc["lastCycle"]["counts"]["unchanged"] == 1  # only ext-prod's api-token

    after = served.cycles()
    body = json.dumps({"paths": ["secret/web/staging", canary.new("bad-sig")]}).encode()
    assert served.post(body, key=b"not the key") == 401
    assert served.post(body, ts=int(time.time()) - 600) == 401
    huge = json.dumps({"paths": [canary.new("huge") * 3000]}).encode()
    assert len(huge) > 64 * 1024
    assert served.post(huge) == 413
    assert served.cycles() == after  # refused requests did no work
    metrics = served.request("/metrics")[1]
    assert 'secretsync_webhooks_total{outcome="unauthorized"} 2.0' in metrics
    assert 'secretsync_webhooks_total{outcome="too_large"} 1.0' in metrics

    started = time.monotonic()
    os.kill(served.proc.pid, signal.SIGTERM)
    assert served.proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 20
    logged = served.log.read_text()
    assert "stopped" in logged
    for text in [*served.seen, logged]:
        assert not canary.find_in_text(text), canary.find_in_text(text)

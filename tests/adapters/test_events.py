"""Kubernetes Events of the daemon on a real kube-apiserver (tests/MATRIX.md row E1).

A daemon cycle runs against a fleet with one object whose Vault path is missing; the Events
are read back through the API as `kubectl get events --field-selector` reads them. Waits are
polls of a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from secretsync.core.model import Fleet
from secretsync.daemon.service import Daemon
from secretsync.daemon.settings import DaemonSettings
from secretsync.kube import events
from secretsync.kube.clusters import Endpoint
from secretsync.sources import resolve
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import canary, cli, keys
from tests.support.fakes import FakeSource
from tests.support.kubecluster import KubeCluster

MakeRepo = Callable[[dict[str, str | bytes]], Path]

FLEET = (
    "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: ev}\n"
    "spec: {output: {dir: rendered}}\n"
)
CLUSTER = (
    "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\nmetadata: {name: edge}\n"
    "spec: {delivery: sealed, sealedSecrets: {certFile: certs/edge.pem}}\n"
)


def fleet(make: MakeRepo, secrets: str, *, expires_in_days: float = 365) -> Path:
    """A fleet of one sealed cluster `edge` whose certificate expires in `expires_in_days`."""
    not_after = datetime.now(UTC) + timedelta(days=expires_in_days)
    return make(
        {
            "secretsync.yaml": FLEET,
            "clusters/c.yaml": CLUSTER,
            "certs/edge.pem": keys.cert_pem(keys.rsa_key(0), not_after=not_after),
            "secrets/s.yaml": secrets,
        }
    )


def secret(name: str, path: str) -> str:
    return (
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: {name}}}\n"
        f"spec:\n  clusterSelector: {{}}\n  target: {{name: {name}, namespace: apps}}\n"
        f"  data: {{v: {{vault: {{path: {path}, key: v}}}}}}\n"
    )


def make_daemon(root: Path, recorder: events.Events, values: dict[str, Any]) -> Daemon:
    settings = DaemonSettings(fleet_path=root, hmac_key=b"events", kube=False, interval_s=3600)

    def sources(fleet: Fleet, env: Mapping[str, str]) -> Mapping[str, resolve.Source]:
        return {"vault": FakeSource(values)}  # type: ignore[arg-type]

    return Daemon(settings=settings, make_sources=sources, recorder=recorder)


def recorder_for(api: Endpoint, namespace: str, **kw: Any) -> events.EventRecorder:
    involved = events.ObjectRef(
        kind="Pod", api_version="v1", namespace=namespace, name="secretsync-0"
    )
    return events.EventRecorder(
        api=api, correlator=events.Correlator(involved=involved, host="test"), **kw
    )


def listed(
    cluster: KubeCluster, namespace: str, *, name: str = "secretsync-0"
) -> list[dict[str, Any]]:
    """The Events about the daemon, as `kubectl get events --field-selector` lists them."""
    with cluster.api_client() as api:
        found = k8s.CoreV1Api(api).list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}"
        )
        docs: list[dict[str, Any]] = api.sanitize_for_serialization(found)["items"]
    text = canary.keep("kubernetes Events", json.dumps(docs))
    assert canary.find_in_text(text) == []
    return docs


async def test_a_failing_object_makes_one_event_that_counts(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, fleet_repo: MakeRepo
) -> None:
    ns = kube_namespace(kube_cluster, prefix="ev")
    values = {"apps/ok": {"v": canary.new("ev-ok")}}
    both = secret("good", "apps/ok") + "---\n" + secret("bad", "apps/gone")
    root = fleet(fleet_repo, both, expires_in_days=3)
    api = kube_cluster.endpoint()
    recorder = recorder_for(api, ns)
    daemon = make_daemon(root, recorder, values)
    try:
        for n in range(3):
            await daemon.cycle(trigger="interval")
            assert await recorder.drain(10)
            found = {e["reason"]: e for e in listed(kube_cluster, ns)}
            assert sorted(found) == ["CertificateExpiring", "SecretSyncFailed"]
            assert found["CertificateExpiring"]["count"] == n + 1
            assert found["CertificateExpiring"]["message"].startswith(
                "cluster edge: sealing certificate expires 20"
            )
            event = found["SecretSyncFailed"]
            assert event["count"] == n + 1
            assert event["type"] == "Warning"
            assert event["message"].startswith("cluster edge: apps/bad: ")
            assert "not found" in event["message"]
            assert event["involvedObject"]["kind"] == "Pod"
        assert recorder.outcomes == {
            "created": 2,
            "patched": 4,
            "failed": 0,
            "dropped": 0,
            "limited": 0,
        }

        # a refused fleet commit is an Event of its own, naming the file
        (root / "secrets/broken.yaml").write_text("kind: FleetSecret\nspec: [\n")
        await daemon.cycle(trigger="interval")
        assert await recorder.drain(10)
        reasons = {e["reason"]: e for e in listed(kube_cluster, ns)}
        assert set(reasons) == {"SecretSyncFailed", "FleetRefused", "CertificateExpiring"}
        assert "secrets/broken.yaml" in reasons["FleetRefused"]["message"]
        assert reasons["SecretSyncFailed"]["count"] == 4  # the last good fleet ran on
    finally:
        await daemon._wiring.aclose()
        await recorder.aclose()
        await api.aclose()


async def test_held_deletes_make_an_event(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, fleet_repo: MakeRepo
) -> None:
    ns = kube_namespace(kube_cluster, prefix="ev")
    values = {f"apps/p{i}": {"v": canary.new(f"ev-held{i}")} for i in range(4)}
    root = fleet(fleet_repo, "---\n".join(secret(f"s{i}", f"apps/p{i}") for i in range(4)))
    api = kube_cluster.endpoint()
    recorder = recorder_for(api, ns)
    daemon = make_daemon(root, recorder, values)
    try:
        await daemon.cycle(trigger="start")
        assert daemon.board.document()["lastCycle"]["counts"]["create"] == 4
        (root / "secrets/s.yaml").write_text(secret("s0", "apps/p0"))  # 3 of 4 gone: over 25%
        await daemon.cycle(trigger="interval")
        await daemon.cycle(trigger="interval")
        assert await recorder.drain(10)
        (event,) = listed(kube_cluster, ns)
        assert event["reason"] == "DeletesHeld"
        assert event["message"].startswith("cluster edge: 3 deletes held: over the delete limit")
        assert event["count"] == 2
    finally:
        await daemon._wiring.aclose()
        await recorder.aclose()
        await api.aclose()


async def test_a_flood_is_rate_limited(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, fleet_repo: MakeRepo
) -> None:
    ns = kube_namespace(kube_cluster, prefix="ev")
    root = fleet(fleet_repo, "---\n".join(secret(f"s{i:03d}", f"apps/m{i}") for i in range(80)))
    api = kube_cluster.endpoint()
    recorder = recorder_for(api, ns)
    daemon = make_daemon(root, recorder, {})
    try:
        await daemon.cycle(trigger="interval")
        await daemon.cycle(trigger="interval")
        assert await recorder.drain(20)
        found = listed(kube_cluster, ns)
        assert daemon.board.document()["lastCycle"]["counts"]["failed"] == 80
        assert len(found) == events.BURST == 25
        assert all(e["count"] == 1 for e in found)
        assert recorder.limited == recorder.outcomes["limited"] == 2 * 80 - 25
        measured = {
            s.labels["outcome"]: s.value
            for family in text_string_to_metric_families(daemon.metrics.render().decode())
            for s in family.samples
            if s.name == "secretsync_events_total"
        }
        assert measured == {"created": 25, "limited": 135}
    finally:
        await daemon._wiring.aclose()
        await recorder.aclose()
        await api.aclose()


async def test_a_refusing_or_paused_apiserver_never_slows_a_cycle(
    kube_cluster: KubeCluster,
    kube_namespace: NamespaceFactory,
    fleet_repo: MakeRepo,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ns = kube_namespace(kube_cluster, prefix="ev")
    root = fleet(fleet_repo, "---\n".join(secret(f"s{i}", f"apps/m{i}") for i in range(5)))

    async def timed(daemon: Daemon) -> float:
        t0 = time.monotonic()
        await daemon.cycle(trigger="interval")
        return time.monotonic() - t0

    # refused: a user without RBAC on Events gets 403, logged once for any number of Events
    refused_api = kube_cluster.endpoint(user="unprivileged")
    refused = recorder_for(refused_api, ns, timeout_s=0.5)
    daemon = make_daemon(root, refused, {})
    try:
        with caplog.at_level(logging.WARNING, logger="secretsync.kube.events"):
            await timed(daemon)
            await timed(daemon)
            assert await refused.drain(10)
        assert refused.outcomes["failed"] == 10 and refused.outcomes["created"] == 0
        warned = [r for r in caplog.records if r.name == "secretsync.kube.events"]
        assert len(warned) == 1 and "cannot post Events" in warned[0].getMessage()
    finally:
        await daemon._wiring.aclose()
        await refused.aclose()
        await refused_api.aclose()

    api = kube_cluster.endpoint()
    recorder = recorder_for(api, ns, timeout_s=0.5)
    daemon = make_daemon(root, recorder, {})
    try:
        baseline = await timed(daemon)
        assert await recorder.drain(10)
        assert len(listed(kube_cluster, ns)) == 5
        kube_cluster.pause()
        try:
            paused = [await timed(daemon) for _ in range(3)]
            # 15 posts queued against a server that answers nothing: each costs the worker
            # 0.5 s, none costs the cycle anything
            assert max(paused) < baseline + 0.5, (baseline, paused)
            deadline = time.monotonic() + 10
            while recorder.outcomes["failed"] < 2:  # posts time out while it is paused
                assert time.monotonic() < deadline, recorder.outcomes
                await asyncio.sleep(0.05)
        finally:
            kube_cluster.resume()
        assert await recorder.drain(30)
        await daemon.cycle(trigger="interval")
        assert await recorder.drain(10)
        counts = sorted(e["count"] for e in listed(kube_cluster, ns))
        assert counts == [5] * 5, counts  # the count lost while paused is carried by the next
    finally:
        await daemon._wiring.aclose()
        await recorder.aclose()
        await api.aclose()
    print(
        f"cycle {baseline * 1000:.0f} ms; paused apiserver: {[round(p * 1000) for p in paused]} ms"
    )


def test_serve_posts_events_about_its_pod(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, tmp_path: Path
) -> None:
    """`secretsync serve --home-kubeconfig` as a user runs it (Events on by default): an
    object that cannot be delivered is one Event on the Pod the downward API names, its count
    growing with every cycle."""
    ns = kube_namespace(kube_cluster, prefix="ev")
    pod = f"secretsync-{secrets.token_hex(3)}"
    value = canary.new("ev-serve")
    # an inline value lives in the repo by design: this repo stays out of the leak scan of
    # fleet repos (as the chart's), while logs and Events are scanned for it
    root = tmp_path / "fleet"
    files = {
        "secretsync.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\n"
        "metadata: {name: ev}\nspec: {defaults: {delivery: direct}}\n",
        "clusters/c.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        "metadata: {name: home}\n"
        f"spec: {{kubeconfig: {{path: {kube_cluster.kubeconfig(tmp_path / 'c.yaml')}}}}}\n",
        "secrets/s.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        "metadata: {name: app}\nspec:\n  clusterSelector: {}\n"
        "  target: {name: app, namespace: no-such-namespace}\n"
        f"  data: {{password: {{value: {value}}}}}\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    home = kube_cluster.kubeconfig(tmp_path / "home.yaml")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "SECRETSYNC_HMAC_KEY": canary.new("hmac"),
        "POD_NAME": pod,
        "POD_NAMESPACE": ns,
    }
    log = tmp_path / "serve.log"
    proc = cli.serve(
        root, "--listen", "127.0.0.1:0", "--interval", "1", "--no-git", "--no-leader-elect",
        "--home-kubeconfig", str(home), env=env, log=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        found: list[dict[str, Any]] = []
        while not (found and found[0]["count"] >= 3):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, (found, log.read_text()[-3000:])
            time.sleep(0.2)  # poll interval under the deadline above
            found = listed(kube_cluster, ns, name=pod)
        (event,) = found
        assert event["reason"] == "SecretSyncFailed"
        assert event["message"].startswith("cluster home: no-such-namespace/app: ")
        assert event["involvedObject"]["kind"] == "Pod"
        assert event["involvedObject"]["namespace"] == ns
        assert event["source"]["component"] == "secretsync"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        cli.stop(proc)
    text = log.read_text()
    assert "Events on: about Pod" in text and value not in text
    canary.keep("serve log", text)

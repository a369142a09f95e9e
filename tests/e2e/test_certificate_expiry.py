"""The daemon shows when each sealing certificate expires: a warning in /v1/status and on the
page within 7 days of expiry (and once expired), and the metric
`secretsync_certificate_expiry_timestamp_seconds{cluster}`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from secretsync.app import wiring
from secretsync.daemon import fleetpage
from secretsync.daemon.service import Daemon
from secretsync.daemon.settings import DaemonSettings
from tests.support import keys

MakeRepo = Callable[[dict[str, str | bytes]], Path]


def cluster(name: str) -> str:
    return (
        f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: {name}}}\n"
        f"spec: {{delivery: sealed, sealedSecrets: {{certFile: certs/{name}.pem}}}}\n"
    )


async def test_expiring_certificates_warn_and_are_measured(fleet_repo: MakeRepo) -> None:
    now = datetime.now(UTC)
    soon, later = now + timedelta(days=3), now + timedelta(days=100)
    root = fleet_repo(
        {
            "secretsync.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: certs}\n"
                "spec: {output: {dir: rendered}}\n"
            ),
            "clusters/all.yaml": "---\n".join([cluster("soon"), cluster("later"), cluster("gone")]),
            "certs/soon.pem": keys.cert_pem(keys.rsa_key(0), not_after=soon),
            "certs/later.pem": keys.cert_pem(keys.rsa_key(1), not_after=later),
            "certs/gone.pem": keys.cert_pem(
                keys.rsa_key(2), not_before=now - timedelta(days=40), not_after=now - timedelta(1)
            ),
        }
    )
    daemon = Daemon(
        settings=DaemonSettings(fleet_path=root, hmac_key=b"expiry", kube=False, interval_s=3600),
        make_sources=wiring.build_sources,
    )
    try:
        await daemon.cycle(trigger="start")
    finally:
        await daemon._wiring.aclose()
    found = daemon.board.document()["certificates"]
    assert found["soon"]["warning"].startswith("expires in 3.0 days")
    assert "cluster refresh-cert soon" in found["soon"]["warning"]
    assert found["later"]["warning"] == ""
    assert found["gone"]["warning"].startswith("expired")
    metrics = {
        s.labels["cluster"]: s.value
        for family in text_string_to_metric_families(daemon.metrics.render().decode())
        for s in family.samples
        if s.name == "secretsync_certificate_expiry_timestamp_seconds"
    }
    assert abs(metrics["soon"] - soon.timestamp()) < 1
    assert abs(metrics["later"] - later.timestamp()) < 1
    page = fleetpage.render_page(daemon.board, nonce="n")
    assert "id=certificates" in page and "soon: expires in 3.0 days" in page
    assert "later:" not in page

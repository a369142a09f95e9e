"""The fleet's sealing certificates in the daemon: when they expire (status warns within a week;
metric `secretsync_certificate_expiry_timestamp_seconds`), and their renewal on a schedule
(`serve --git-push --cert-refresh-interval`): sealed-secrets controllers renew their key every
30 days, and each sealed Cluster that names its `sealedSecrets.controller` gets the current
certificate fetched through its API server, as `secretsync cluster refresh-cert` does."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from secretsync.core import errors
from secretsync.core.model import ControllerRef, Fleet
from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery import sealed
from secretsync.fleet.certificates import FleetCertificates

log = logging.getLogger(__name__)

WARNING_DAYS: Final = 7
DEFAULT_REFRESH_S: Final = 24 * 3600.0


def expiry(fleet: Fleet) -> dict[str, datetime]:
    """When each sealed cluster's certificate (`certFile`) expires; clusters whose file does
    not read or parse are left out (their render says why)."""
    return FleetCertificates(fleet).expiry()


@dataclass(frozen=True, slots=True, kw_only=True)
class Renewal:
    """A certificate taken from a cluster's controller: the files changed (repo-relative)."""

    cluster: str
    paths: tuple[str, ...]
    old: str | None  # certificate SHA-256
    new: str

    def note(self) -> str:
        """The commit message's line (certificate SHA-256s are public)."""
        return f"certificate {self.cluster}: {(self.old or 'none')[:16]} -> {self.new[:16]}"


async def renew(fleet: Fleet, *, home_kubeconfig: str | None, now: datetime) -> list[Renewal]:
    """Fetch the current certificate of every sealed cluster that names its controller and
    write the changed ones into the fleet repo (certificate and pin, `registry`). A cluster that
    cannot be reached keeps its certificate (logged); the others go on."""
    wanted = [
        c
        for c in fleet.clusters.values()
        if delivery_kinds.of(c).seals
        and sealed.settings(c).controller is not None
        and sealed.settings(c).cert_file
    ]
    if not wanted:
        return []
    # the kubernetes client is heavy: imported only when a renewal runs
    from secretsync.fleet import enroll  # noqa: PLC0415
    from secretsync.kube import clusters  # noqa: PLC0415

    try:
        home = clusters.endpoint_from_file(Path(home_kubeconfig)) if home_kubeconfig else None
    except errors.SecretSyncError as exc:
        log.warning("certificates not renewed: home kubeconfig: %s", exc)
        return []
    factory = clusters.ClientFactory(root=fleet.root, home=home)
    out: list[Renewal] = []
    try:
        for cluster in sorted(wanted, key=lambda c: c.name):
            controller = sealed.settings(cluster).controller or ControllerRef()
            try:
                api = await factory.for_cluster(cluster)
                done = await enroll.refresh_certificate(
                    fleet.root, cluster=cluster, api=api, controller=controller, now=now
                )
            except errors.SecretSyncError as exc:
                log.warning("certificate of %s not renewed: %s", cluster.name, exc)
                continue
            if not done.changed:
                continue
            paths = [done.cert_file, *([cluster.origin.file] if done.pin_updated else [])]
            out.append(
                Renewal(
                    cluster=cluster.name,
                    paths=tuple(paths),
                    old=done.old_sha256,
                    new=done.new_sha256,
                )
            )
            log.info("certificate of %s renewed: %s", cluster.name, out[-1].note())
    finally:
        await factory.aclose()
    return out

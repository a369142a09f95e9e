"""The sealing certificates of one loaded Fleet, each read and parsed once.

The one place a certificate of the fleet repo is loaded for use: a cycle seals every sealing
cluster's objects with its certificate, `validate` checks them, `seal` seals values with them,
and the daemon reports when each expires; all take them from here, so a fleet's certificate
files are read once per load (the daemon loads the fleet before every cycle) instead of once
per use. (The loader checks a pin against the file as it reads the Cluster; the pin is checked
again here, so a file swapped after the load is refused.) The validity period is checked at
each use: a certificate may expire while a fleet stays loaded.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509

from secretsync.core import errors
from secretsync.core.model import Cluster, ControllerRef, Fleet
from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery import seal, sealed
from secretsync.fleet.load.files import read_fleet_file


class FleetCertificates:
    """The certificate of each sealing cluster of `fleet`, read when first asked for."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._pem: dict[str, bytes | errors.ConfigError] = {}
        self._parsed: dict[str, seal.Certificate | errors.SealError] = {}

    def _read(self, cluster: Cluster, cert_file: str) -> bytes:
        pem = self._pem.get(cluster.name)
        if pem is None:
            try:
                pem = read_fleet_file(self.fleet.root, cert_file)
            except errors.ConfigError as exc:
                pem = exc
            self._pem[cluster.name] = pem
        if isinstance(pem, errors.ConfigError):
            raise pem
        return pem

    def awaiting(self, cluster: Cluster) -> ControllerRef | None:
        """The controller `cluster`'s certificate is to be fetched from, while its file is not
        there yet (`cluster refresh-cert` and `serve --git-push` fetch it)."""
        settings = sealed.settings(cluster)
        if settings.controller is None or settings.cert_file is None:
            return None
        if (self.fleet.root / settings.cert_file).exists():
            return None
        return settings.controller

    def certificate(self, cluster: Cluster, *, now: datetime) -> seal.Certificate:
        """The certificate `cluster` seals with at `now`. Raises `errors.SealError` (none
        configured, none fetched yet, unusable, expired) or `errors.ConfigError` (the file
        does not read)."""
        settings = sealed.settings(cluster)
        cert_file = settings.cert_file
        if cert_file is None:
            raise errors.SealError(f"cluster {cluster.name!r} has no sealedSecrets.certFile")
        if (ref := self.awaiting(cluster)) is not None:
            raise errors.SealError(
                f"no sealing certificate at {cert_file} yet: fetch it from "
                f"{ref.namespace}/{ref.name} with `secretsync cluster refresh-cert "
                f"{cluster.name}` (serve --git-push does it on its schedule)"
            )
        parsed = self._parsed.get(cluster.name)
        if parsed is None:
            pem = self._read(cluster, cert_file)
            try:
                parsed = seal.read_certificate(pem, source=cert_file, sha256=settings.cert_sha256)
            except errors.SealError as exc:
                parsed = exc
            self._parsed[cluster.name] = parsed
        if isinstance(parsed, errors.SealError):
            raise parsed
        seal.check_valid_at(parsed, now, source=cert_file)
        return parsed

    def expiry(self) -> dict[str, datetime]:
        """When each sealing cluster's certificate (`certFile`) expires; clusters whose file
        does not read or parse are left out (their render says why)."""
        out: dict[str, datetime] = {}
        for name, cluster in sorted(self.fleet.clusters.items()):
            settings = sealed.settings(cluster)
            if not delivery_kinds.of(cluster).seals or settings.cert_file is None:
                continue
            try:
                pem = self._read(cluster, settings.cert_file)
                found = x509.load_pem_x509_certificates(pem)
            except (errors.ConfigError, OSError, ValueError):
                continue
            if found:
                out[name] = found[0].not_valid_after_utc
        return out

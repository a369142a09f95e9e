"""When the fleet's sealing certificates expire: for the daemon's status (a warning within a week)
and the metric `secretsync_certificate_expiry_timestamp_seconds`. sealed-secrets controllers
renew their key every 30 days; `secretsync cluster refresh-cert` takes the new certificate."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from cryptography import x509

from secretsync import errors, load
from secretsync.model import Delivery, Fleet

WARNING_DAYS: Final = 7


def expiry(fleet: Fleet) -> dict[str, datetime]:
    """When each sealed cluster's certificate (`certFile`) expires; clusters whose file does
    not read or parse are left out (their render says why)."""
    out: dict[str, datetime] = {}
    for name, cluster in sorted(fleet.clusters.items()):
        if cluster.delivery is not Delivery.SEALED or cluster.cert_file is None:
            continue
        try:
            pem = load.read_fleet_file(fleet.root, cluster.cert_file)
            certificates = x509.load_pem_x509_certificates(pem)
        except (errors.ConfigError, OSError, ValueError):
            continue
        if certificates:
            out[name] = certificates[0].not_valid_after_utc
    return out

#!/usr/bin/env python3
"""Create the DEMO sealing key pairs of the example fleet.

For each example cluster this writes a self-signed RSA-4096 certificate, shaped like the one a
Sealed Secrets controller makes (CA, 10-year validity, random 128-bit serial), to
`examples/fleet/certs/<cluster>.pem`, and its private key (PKCS#1 PEM) to
`examples/demo-keys/<cluster>.key`.

The private keys are published in the repository on purpose so anyone can unseal the example
output offline. They are demo-only and must never be used for a real cluster.

Existing files are kept unless `--force` is given: replacing a key makes every value sealed to
the old certificate unreadable with the new key.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CLUSTERS = ("dev-use1", "staging-use1", "prod-use1", "prod-euw1")
KEY_BITS = 4096
VALIDITY = timedelta(hours=87600)  # 10 years, the controller's default key TTL
ROOT = Path(__file__).resolve().parent.parent


def make_key_pair(cluster: str, now: datetime) -> tuple[bytes, bytes]:
    """(certificate PEM, PKCS#1 private key PEM) for one cluster."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"demo-{cluster}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1 + secrets.randbelow((1 << 128) - 1))
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument("--force", action="store_true", help="replace existing key pairs")
    args = parser.parse_args(argv)

    certs_dir: Path = args.root / "examples" / "fleet" / "certs"
    keys_dir: Path = args.root / "examples" / "demo-keys"
    certs_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)

    for cluster in CLUSTERS:
        cert_path = certs_dir / f"{cluster}.pem"
        key_path = keys_dir / f"{cluster}.key"
        if not args.force and (cert_path.exists() or key_path.exists()):
            print(f"{cluster}: kept existing key pair (use --force to replace it)")
            continue
        cert_pem, key_pem = make_key_pair(cluster, now)
        key_path.write_bytes(key_pem)
        cert_path.write_bytes(cert_pem)
        written = ", ".join(str(p.relative_to(args.root)) for p in (cert_path, key_path))
        print(f"{cluster}: wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

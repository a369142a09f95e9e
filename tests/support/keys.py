"""Throwaway sealing key pairs for tests (RSA-2048 for speed; never used outside tests)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@functools.cache
def rsa_key(index: int = 0, bits: int = 2048) -> rsa.RSAPrivateKey:
    del index  # one cached key per index
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def self_signed_pem(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    common_name: str = "test-sealing",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ca: bool = False,
) -> bytes:
    """A self-signed certificate of `key` (PEM), valid from a day ago for ten years unless
    given; `ca` marks it a certificate authority."""
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=3650))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def cert_pem(
    key: rsa.RSAPrivateKey,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> bytes:
    """The sealing certificate of `key`, as a controller would publish it."""
    return self_signed_pem(key, not_before=not_before, not_after=not_after)


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )

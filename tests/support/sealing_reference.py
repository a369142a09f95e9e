"""A second, test-only implementation of the SealedSecret item format, to check seal.py against.

Built from the format description alone on `cryptography` primitives, and deliberately not
importing anything from `secretsync`:

    base64std( len(rsa_part) as 2 bytes big-endian | rsa_part | aes_gcm_ciphertext_and_tag )

with rsa_part = RSA-OAEP(SHA-256, MGF1-SHA-256, label)(aes_key), a 32-byte AES key, a 12-byte
zero nonce and no associated data. Labels: strict "ns/name", namespace-wide "ns",
cluster-wide "".
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class ReferenceUnsealError(Exception):
    """The reference implementation could not open a sealed item."""


def reference_label(namespace: str, name: str, scope: str) -> bytes:
    if scope in ("strict", ""):
        return (namespace + "/" + name).encode("utf-8")
    if scope == "namespace-wide":
        return namespace.encode("utf-8")
    if scope == "cluster-wide":
        return b""
    raise ValueError(f"unknown scope {scope!r}")


def _padding(label: bytes) -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()),
        algorithm=hashes.SHA256(),
        label=label if label else None,
    )


def reference_seal(public_key: rsa.RSAPublicKey, value: bytes, label: bytes) -> str:
    aes_key = os.urandom(32)
    wrapped = public_key.encrypt(aes_key, _padding(label))
    body = AESGCM(aes_key).encrypt(b"\0" * 12, value, None)
    raw = len(wrapped).to_bytes(2, "big") + wrapped + body
    return base64.standard_b64encode(raw).decode("ascii")


def reference_split(item: str) -> tuple[bytes, bytes]:
    """(RSA part, AES-GCM part) of a sealed item; raises ReferenceUnsealError if malformed."""
    raw = base64.standard_b64decode(item.encode("ascii"))
    if len(raw) < 2:
        raise ReferenceUnsealError("too short for the length prefix")
    rsa_len = int.from_bytes(raw[:2], "big")
    if len(raw) < 2 + rsa_len:
        raise ReferenceUnsealError("too short for the RSA part")
    return raw[2 : 2 + rsa_len], raw[2 + rsa_len :]


def reference_unseal(private_key: rsa.RSAPrivateKey, item: str, label: bytes) -> bytes:
    wrapped, body = reference_split(item)
    try:
        aes_key = private_key.decrypt(wrapped, _padding(label))
    except ValueError as exc:
        raise ReferenceUnsealError("RSA-OAEP decryption failed") from exc
    if len(aes_key) != 32:
        raise ReferenceUnsealError("session key is not 32 bytes")
    try:
        return AESGCM(aes_key).decrypt(b"\0" * 12, body, None)
    except InvalidTag as exc:
        raise ReferenceUnsealError("AES-GCM authentication failed") from exc

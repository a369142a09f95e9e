"""Sealing for Bitnami Sealed Secrets: certificates, scopes and the per-value wire format.

This module owns everything secretsync needs to produce and check `SealedSecret` ciphertexts
without talking to a cluster:

- reading a controller's certificate (the first one in a PEM file, RSA only, within its
  validity period) into a `Certificate`;
- the OAEP label and the SealedSecret annotation that each `Scope` implies;
- sealing one value into an `encryptedData` item: a fresh 32-byte AES-256-GCM session key
  (all-zero 12-byte nonce, no associated data), wrapped with RSA-OAEP (SHA-256, MGF1-SHA-256,
  label per scope), laid out as `uint16_be(len(rsa_ct)) || rsa_ct || aes_ct || tag` and
  encoded as standard padded base64;
- the reverse, for offline recovery and verification: loading private keys, unsealing one item
  with any of several keys, and unsealing every item of a parsed SealedSecret manifest.

It is pure: callers pass bytes and parsed documents in, and randomness is injectable. Error
messages name sources, manifests and keys, never certificate, key or secret contents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secretsync.core.errors import SealError
from secretsync.core.model import Scope

__all__ = [
    "ANNOTATION_CLUSTER_WIDE",
    "ANNOTATION_NAMESPACE_WIDE",
    "MIN_KEY_BITS",
    "SEALED_API_VERSION",
    "SEALED_KIND",
    "SESSION_KEY_BYTES",
    "Certificate",
    "check_valid_at",
    "label_for",
    "load_certificate",
    "load_private_keys",
    "public_key_fingerprint",
    "read_certificate",
    "scope_annotations",
    "scope_from_annotations",
    "seal_value",
    "sealed_length",
    "unseal_manifest",
    "unseal_value",
]

SEALED_API_VERSION: Final = "bitnami.com/v1alpha1"
SEALED_KIND: Final = "SealedSecret"
ANNOTATION_NAMESPACE_WIDE: Final = "sealedsecrets.bitnami.com/namespace-wide"
ANNOTATION_CLUSTER_WIDE: Final = "sealedsecrets.bitnami.com/cluster-wide"

SESSION_KEY_BYTES: Final = 32
"""AES-256: one fresh key per sealed value."""

MIN_KEY_BITS: Final = 2048
"""Smallest RSA modulus accepted from a certificate."""

_GCM_NONCE: Final = bytes(12)
_GCM_TAG_BYTES: Final = 16
_LENGTH_PREFIX: Final = struct.Struct(">H")
_DATE_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"

_PEM_BLOCK: Final = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----",
    re.DOTALL,
)
_KEY_BLOCK_TYPES: Final = frozenset({b"RSA PRIVATE KEY", b"PRIVATE KEY"})
_UNSUPPORTED_KEY_BLOCK_TYPES: Final = frozenset(
    {b"ENCRYPTED PRIVATE KEY", b"EC PRIVATE KEY", b"DSA PRIVATE KEY", b"OPENSSH PRIVATE KEY"}
)


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def _utc(moment: datetime) -> str:
    return moment.strftime(_DATE_FORMAT)


def _key_kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA"
    return "unsupported key type"


# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certificate:
    """A controller's sealing certificate, reduced to what sealing needs.

    `fingerprint` is the hex SHA-256 of the DER SubjectPublicKeyInfo: a stable id of the key,
    the same for every certificate issued over that key.
    """

    public_key: RSAPublicKey
    fingerprint: str
    not_before: datetime
    not_after: datetime
    key_bits: int
    sha256: str = ""  # hex SHA-256 of the certificate's DER: what `certificateSha256` pins


def public_key_fingerprint(public_key: RSAPublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo of `public_key`."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


_SHA256_PIN: Final = re.compile(r"[0-9a-f]{64}")


def normalize_sha256(text: str) -> str | None:
    """A SHA-256 fingerprint as 64 lowercase hex digits, from hex with or without colons
    (`openssl x509 -fingerprint -sha256` prints `AB:CD:…`); None when it is not one."""
    digits = text.strip().replace(":", "").lower()
    return digits if _SHA256_PIN.fullmatch(digits) else None


def _first_certificate(pem: bytes, source: str) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise SealError(f"{source}: not a PEM certificate") from None
    if not certs:
        raise SealError(f"{source}: not a PEM certificate")
    return certs[0]


def certificate_sha256(pem: bytes, *, source: str) -> str:
    """Hex SHA-256 of the DER of the first certificate of `pem` (public: safe to print)."""
    cert = _first_certificate(pem, source)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def check_pin(actual: str, expected: str | None, *, source: str) -> None:
    """Refuse a certificate whose SHA-256 is not the pinned one (when one is pinned)."""
    if expected is not None and actual != expected:
        raise SealError(
            f"{source}: certificate SHA-256 is {actual}, not the pinned {expected} "
            "(certificateSha256): it was replaced or rotated; check it and update the pin"
        )


def load_certificate(
    pem: bytes, *, source: str, now: datetime, sha256: str | None = None
) -> Certificate:
    """Read the first certificate of `pem` and check it can seal at `now`.

    `source` names where the PEM came from (a repo-relative file or a cluster) for messages.
    Raises `SealError` when the bytes hold no PEM certificate, its SHA-256 is not `sha256`
    (a pin, normalised by `normalize_sha256`), the key is not RSA or is smaller than
    `MIN_KEY_BITS`, or `now` lies outside the validity period.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    certificate = read_certificate(pem, source=source, sha256=sha256)
    check_valid_at(certificate, now, source=source)
    return certificate


def read_certificate(pem: bytes, *, source: str, sha256: str | None = None) -> Certificate:
    """`load_certificate` without the validity period: what stays true of the bytes whatever
    the time (a loaded fleet reads each certificate once, and checks it at each use)."""
    cert = _first_certificate(pem, source)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    check_pin(digest, sha256, source=source)
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise SealError(f"{source}: certificate key is not RSA (unsupported key type)") from None
    if not isinstance(public_key, RSAPublicKey):
        raise SealError(f"{source}: certificate key is not RSA ({_key_kind(public_key)})")
    if public_key.key_size < MIN_KEY_BITS:
        raise SealError(
            f"{source}: RSA key of {public_key.key_size} bits is too small "
            f"(at least {MIN_KEY_BITS} required)"
        )
    return Certificate(
        public_key=public_key,
        fingerprint=public_key_fingerprint(public_key),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_bits=public_key.key_size,
        sha256=digest,
    )


def check_valid_at(certificate: Certificate, now: datetime, *, source: str) -> None:
    """Raise `SealError` when `now` lies outside the certificate's validity period."""
    if now > certificate.not_after:
        raise SealError(f"{source}: certificate expired on {_utc(certificate.not_after)}")
    if now < certificate.not_before:
        raise SealError(f"{source}: certificate not valid before {_utc(certificate.not_before)}")


# --- scopes ----------------------------------------------------------------------------------


def label_for(namespace: str, name: str, scope: Scope) -> bytes:
    """The OAEP label that binds a sealed value to its place: `ns/name`, `ns` or nothing."""
    match scope:
        case Scope.STRICT:
            return f"{namespace}/{name}".encode()
        case Scope.NAMESPACE_WIDE:
            return namespace.encode()
        case Scope.CLUSTER_WIDE:
            return b""


def scope_annotations(scope: Scope) -> dict[str, str]:
    """The SealedSecret annotation that tells the controller which label to use."""
    match scope:
        case Scope.STRICT:
            return {}
        case Scope.NAMESPACE_WIDE:
            return {ANNOTATION_NAMESPACE_WIDE: "true"}
        case Scope.CLUSTER_WIDE:
            return {ANNOTATION_CLUSTER_WIDE: "true"}


def scope_from_annotations(annotations: Mapping[str, Any]) -> Scope:
    """The scope a controller reads from annotations: only `"true"` counts, cluster-wide first."""
    if annotations.get(ANNOTATION_CLUSTER_WIDE) == "true":
        return Scope.CLUSTER_WIDE
    if annotations.get(ANNOTATION_NAMESPACE_WIDE) == "true":
        return Scope.NAMESPACE_WIDE
    return Scope.STRICT


# --- one value -------------------------------------------------------------------------------


def sealed_length(key_bits: int, plaintext_len: int) -> int:
    """Decoded length of a sealed value: prefix, RSA block, ciphertext and GCM tag."""
    return _LENGTH_PREFIX.size + (key_bits + 7) // 8 + plaintext_len + _GCM_TAG_BYTES


def seal_value(
    public_key: RSAPublicKey,
    plaintext: bytes,
    *,
    label: bytes,
    rng: Callable[[int], bytes] = os.urandom,
) -> str:
    """Seal `plaintext` for the holder of `public_key` as one `encryptedData` item.

    The session key comes from `rng(32)`; OAEP's own seed comes from the crypto library.
    """
    session_key = rng(SESSION_KEY_BYTES)
    if len(session_key) != SESSION_KEY_BYTES:
        raise ValueError(f"rng returned {len(session_key)} bytes, {SESSION_KEY_BYTES} expected")
    rsa_ct = public_key.encrypt(session_key, _oaep(label))
    aes_ct = AESGCM(session_key).encrypt(_GCM_NONCE, plaintext, None)
    blob = _LENGTH_PREFIX.pack(len(rsa_ct)) + rsa_ct + aes_ct
    return base64.b64encode(blob).decode("ascii")


def _decode(ciphertext: str) -> bytes:
    # Like Go's base64.StdEncoding: line breaks are ignored, anything else must be valid.
    text = ciphertext.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SealError("sealed data is not valid base64") from None


def _try_key(key: RSAPrivateKey, rsa_ct: bytes, aes_ct: bytes, label: bytes) -> bytes | None:
    try:
        session_key = key.decrypt(rsa_ct, _oaep(label))
        return AESGCM(session_key).decrypt(_GCM_NONCE, aes_ct, None)
    except (ValueError, InvalidTag):
        return None


def unseal_value(private_keys: Sequence[RSAPrivateKey], ciphertext: str, *, label: bytes) -> bytes:
    """Open one `encryptedData` item with whichever of `private_keys` sealed it.

    Raises `SealError` ("data is too short", "no key could decrypt secret") without data.
    """
    blob = _decode(ciphertext)
    if len(blob) < _LENGTH_PREFIX.size:
        raise SealError("sealed data is too short")
    (rsa_len,) = _LENGTH_PREFIX.unpack_from(blob)
    rsa_end = _LENGTH_PREFIX.size + rsa_len
    if len(blob) < rsa_end:
        raise SealError("sealed data is too short")
    rsa_ct, aes_ct = blob[_LENGTH_PREFIX.size : rsa_end], blob[rsa_end:]
    for key in private_keys:
        plaintext = _try_key(key, rsa_ct, aes_ct, label)
        if plaintext is not None:
            return plaintext
    raise SealError("no key could decrypt secret")


# --- private keys ----------------------------------------------------------------------------


def load_private_keys(pem: bytes, *, source: str) -> list[RSAPrivateKey]:
    """Every RSA private key in `pem` (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).

    Other PEM blocks (certificates, for example) are skipped. Raises `SealError` naming
    `source` when there is no key, a key cannot be read, is encrypted, or is not RSA.
    """
    keys: list[RSAPrivateKey] = []
    for index, match in enumerate(_PEM_BLOCK.finditer(pem), start=1):
        block_type = match.group(1)
        if block_type in _UNSUPPORTED_KEY_BLOCK_TYPES:
            kind = block_type.decode("ascii")
            raise SealError(f"{source}: PEM block {index} ({kind}) is not supported")
        if block_type not in _KEY_BLOCK_TYPES:
            continue
        try:
            key = serialization.load_pem_private_key(match.group(0), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SealError(f"{source}: PEM block {index} is not a readable private key") from None
        if not isinstance(key, RSAPrivateKey):
            raise SealError(f"{source}: PEM block {index} is not an RSA private key")
        keys.append(key)
    if not keys:
        raise SealError(f"{source}: no PEM private key found")
    return keys


# --- manifests -------------------------------------------------------------------------------


def _mapping(value: object, where: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SealError(f"{where}: {what} must be a mapping")
    return value


def _text(value: object, where: str, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SealError(f"{where}: {what} must be a string")
    return value


def unseal_manifest(
    manifest: Mapping[str, Any], private_keys: Sequence[RSAPrivateKey]
) -> dict[str, bytes]:
    """Open every `spec.encryptedData` item of a parsed SealedSecret.

    The label comes from the SealedSecret's own top-level metadata (namespace, name and scope
    annotations), as the controller computes it; `spec.template.metadata` plays no part.
    """
    metadata = _mapping(manifest.get("metadata"), "SealedSecret", "metadata")
    namespace = _text(metadata.get("namespace"), "SealedSecret", "metadata.namespace")
    name = _text(metadata.get("name"), "SealedSecret", "metadata.name")
    where = f"SealedSecret {namespace}/{name}"

    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if api_version != SEALED_API_VERSION or kind != SEALED_KIND:
        raise SealError(f"{where}: expected apiVersion {SEALED_API_VERSION} and kind {SEALED_KIND}")
    annotations = _mapping(metadata.get("annotations") or {}, where, "metadata.annotations")
    spec = _mapping(manifest.get("spec"), where, "spec")
    if "encryptedData" not in spec:
        if "data" in spec:
            raise SealError(f"{where}: the deprecated spec.data format is not supported")
        raise SealError(f"{where}: spec.encryptedData is missing")
    encrypted = _mapping(spec["encryptedData"] or {}, where, "spec.encryptedData")

    label = label_for(namespace, name, scope_from_annotations(annotations))
    result: dict[str, bytes] = {}
    for key, ciphertext in encrypted.items():
        if not isinstance(key, str) or not isinstance(ciphertext, str):
            raise SealError(f"{where}: spec.encryptedData must map strings to strings")
        try:
            result[key] = unseal_value(private_keys, ciphertext, label=label)
        except SealError as exc:
            raise SealError(f"{where}: key {key!r}: {exc}") from None
    return result

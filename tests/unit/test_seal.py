"""Tests for secretsync.delivery.seal: upstream vectors, a second implementation, properties, certs."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from secretsync.core.errors import SealError
from secretsync.core.model import Scope
from secretsync.delivery.seal import (
    ANNOTATION_CLUSTER_WIDE,
    ANNOTATION_NAMESPACE_WIDE,
    Certificate,
    certificate_sha256,
    label_for,
    load_certificate,
    load_private_keys,
    normalize_sha256,
    public_key_fingerprint,
    scope_annotations,
    scope_from_annotations,
    seal_value,
    sealed_length,
    unseal_manifest,
    unseal_value,
)
from tests.support.sealing_reference import (
    ReferenceUnsealError,
    reference_label,
    reference_seal,
    reference_split,
    reference_unseal,
)

_ROOT = Path(__file__).resolve().parents[2]

DATA = json.loads((_ROOT / "tests" / "data" / "sealed-vectors.json").read_text("utf-8"))
VECTORS: list[dict[str, Any]] = DATA["vectors"]
MANIFEST: dict[str, Any] = DATA["manifests"][0]

# Inside the validity of the vector certificates (2026-11-26 .. 2036-11-23).
NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)

DEMO_CLUSTERS = ("dev-use1", "staging-use1", "prod-use1", "prod-euw1")


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


@functools.cache
def _vector_keys(pem: str) -> tuple[rsa.RSAPrivateKey, ...]:
    # Loading checks the key (slow for RSA-4096); the vectors share two keys, so load each once.
    return tuple(load_private_keys(pem.encode("ascii"), source="tests/data/sealed-vectors.json"))


def _keys(pem: str) -> list[rsa.RSAPrivateKey]:
    return list(_vector_keys(pem))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _body(pem: bytes) -> bytes:
    """A line from the middle of a PEM block, to prove it never shows up in a message."""
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return lines[len(lines) // 2]


def _make_cert(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime,
    not_after: datetime,
    cn: str = "",
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key_2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_4096() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture(params=[2048, 4096], ids=["rsa2048", "rsa4096"])
def any_key(
    request: pytest.FixtureRequest, key_2048: rsa.RSAPrivateKey, key_4096: rsa.RSAPrivateKey
) -> rsa.RSAPrivateKey:
    return key_2048 if request.param == 2048 else key_4096


@pytest.fixture
def manifest() -> dict[str, Any]:
    return copy.deepcopy(MANIFEST["sealed_secret"])


@pytest.fixture(scope="module")
def manifest_keys() -> list[rsa.RSAPrivateKey]:
    return _keys(MANIFEST["private_key_pem"])


# --- upstream vectors ------------------------------------------------------------------------


def test_vector_file_covers_every_scope_and_both_key_sizes() -> None:
    assert {v["scope"] for v in VECTORS} == {s.value for s in Scope}
    assert {v["rsa_key_bits"] for v in VECTORS} == {2048, 4096}
    assert all(v["must_not_unseal_as"] for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_upstream_vector_unseals(vector: dict[str, Any]) -> None:
    label = label_for(vector["namespace"], vector["name"], Scope(vector["scope"]))
    assert label == vector["oaep_label"].encode("utf-8")
    plaintext = unseal_value(_keys(vector["private_key_pem"]), vector["ciphertext"], label=label)
    assert plaintext == _b64(vector["plaintext_b64"])


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_upstream_vector_matches_reference_and_length(vector: dict[str, Any]) -> None:
    [key] = _keys(vector["private_key_pem"])
    label = reference_label(vector["namespace"], vector["name"], vector["scope"])
    expected = _b64(vector["plaintext_b64"])
    assert reference_unseal(key, vector["ciphertext"], label) == expected
    decoded = _b64(vector["ciphertext"])
    assert len(decoded) == sealed_length(vector["rsa_key_bits"], len(expected))
    assert len(decoded) == 2 + vector["rsa_key_bits"] // 8 + len(expected) + 16


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_upstream_vector_certificate_matches_its_key(vector: dict[str, Any]) -> None:
    cert = load_certificate(vector["cert_pem"].encode("ascii"), source="vectors", now=NOW)
    [key] = _keys(vector["private_key_pem"])
    assert cert.fingerprint == public_key_fingerprint(key.public_key())
    assert cert.key_bits == vector["rsa_key_bits"]


_MUST_FAIL = [
    pytest.param(vector, wrong, id=f"{vector['id']}-as-{wrong['scope']}-{wrong['namespace']}-"
                 f"{wrong['name']}")
    for vector in VECTORS
    for wrong in vector["must_not_unseal_as"]
]  # fmt: skip


@pytest.mark.parametrize(("vector", "wrong"), _MUST_FAIL)
def test_upstream_vector_refuses_other_places(
    vector: dict[str, Any], wrong: dict[str, str]
) -> None:
    label = label_for(wrong["namespace"], wrong["name"], Scope(wrong["scope"]))
    with pytest.raises(SealError, match="no key could decrypt secret") as info:
        unseal_value(_keys(vector["private_key_pem"]), vector["ciphertext"], label=label)
    assert vector["ciphertext"][:40] not in str(info.value)


def test_upstream_manifest_unseals(
    manifest: dict[str, Any], manifest_keys: list[rsa.RSAPrivateKey]
) -> None:
    expected = {k: _b64(v) for k, v in MANIFEST["expected_data_b64"].items()}
    assert manifest["metadata"]["annotations"] == {ANNOTATION_NAMESPACE_WIDE: "true"}
    assert unseal_manifest(manifest, manifest_keys) == expected


def test_upstream_manifest_namespace_wide_ignores_name_but_not_namespace(
    manifest: dict[str, Any], manifest_keys: list[rsa.RSAPrivateKey]
) -> None:
    manifest["metadata"]["name"] = "renamed"
    assert set(unseal_manifest(manifest, manifest_keys)) == {"password", "url"}
    manifest["metadata"]["namespace"] = "elsewhere"
    with pytest.raises(SealError, match=r"elsewhere/renamed.*no key could decrypt"):
        unseal_manifest(manifest, manifest_keys)


# --- unseal_manifest: scope detection and errors ---------------------------------------------


def test_manifest_scope_comes_from_top_level_metadata_only(
    manifest: dict[str, Any], manifest_keys: list[rsa.RSAPrivateKey]
) -> None:
    del manifest["metadata"]["annotations"]
    assert ANNOTATION_NAMESPACE_WIDE in manifest["spec"]["template"]["metadata"]["annotations"]
    with pytest.raises(SealError) as info:
        unseal_manifest(manifest, manifest_keys)
    message = str(info.value)
    assert "payments/app-config" in message
    assert "'password'" in message
    assert "no key could decrypt secret" in message
    for ciphertext in manifest["spec"]["encryptedData"].values():
        assert ciphertext[:24] not in message
    for plain in MANIFEST["expected_data_b64"].values():
        assert _b64(plain).decode() not in message


@pytest.mark.parametrize("value", ["True", "yes", "1", "", " true"])
def test_manifest_scope_annotation_counts_only_exact_true(
    manifest: dict[str, Any], manifest_keys: list[rsa.RSAPrivateKey], value: str
) -> None:
    manifest["metadata"]["annotations"] = {ANNOTATION_NAMESPACE_WIDE: value}
    with pytest.raises(SealError, match="no key could decrypt secret"):
        unseal_manifest(manifest, manifest_keys)


def test_manifest_cluster_wide_wins_over_namespace_wide(
    manifest: dict[str, Any], manifest_keys: list[rsa.RSAPrivateKey]
) -> None:
    manifest["metadata"]["annotations"][ANNOTATION_CLUSTER_WIDE] = "true"
    with pytest.raises(SealError, match="no key could decrypt secret"):
        unseal_manifest(manifest, manifest_keys)

    [key] = manifest_keys
    manifest["spec"]["encryptedData"] = {
        "token": seal_value(key.public_key(), b"t0k3n", label=b""),
    }
    assert unseal_manifest(manifest, manifest_keys) == {"token": b"t0k3n"}


def test_scope_from_annotations() -> None:
    assert scope_from_annotations({}) is Scope.STRICT
    assert scope_from_annotations({ANNOTATION_NAMESPACE_WIDE: "true"}) is Scope.NAMESPACE_WIDE
    assert scope_from_annotations({ANNOTATION_CLUSTER_WIDE: "true"}) is Scope.CLUSTER_WIDE
    both = {ANNOTATION_NAMESPACE_WIDE: "true", ANNOTATION_CLUSTER_WIDE: "true"}
    assert scope_from_annotations(both) is Scope.CLUSTER_WIDE
    assert scope_from_annotations({ANNOTATION_CLUSTER_WIDE: "false"}) is Scope.STRICT


def test_manifest_tries_every_key(
    manifest: dict[str, Any],
    manifest_keys: list[rsa.RSAPrivateKey],
    other_key_2048: rsa.RSAPrivateKey,
) -> None:
    keys = [other_key_2048, *manifest_keys]
    assert set(unseal_manifest(manifest, keys)) == {"password", "url"}
    with pytest.raises(SealError, match="no key could decrypt secret"):
        unseal_manifest(manifest, [other_key_2048])


def test_manifest_strict_scope_uses_namespace_and_name(key_2048: rsa.RSAPrivateKey) -> None:
    sealed = seal_value(key_2048.public_key(), b"v", label=b"web/site")
    doc: dict[str, Any] = {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": "site", "namespace": "web"},
        "spec": {"encryptedData": {"k": sealed}, "template": {"metadata": {"name": "other"}}},
    }
    assert unseal_manifest(doc, [key_2048]) == {"k": b"v"}
    doc["metadata"]["name"] = "site2"
    with pytest.raises(SealError, match=r"SealedSecret web/site2: key 'k'"):
        unseal_manifest(doc, [key_2048])


def test_manifest_without_namespace_uses_empty_namespace(key_2048: rsa.RSAPrivateKey) -> None:
    doc: dict[str, Any] = {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": "n"},
        "spec": {"encryptedData": {"k": seal_value(key_2048.public_key(), b"v", label=b"/n")}},
    }
    assert unseal_manifest(doc, [key_2048]) == {"k": b"v"}
    doc["metadata"]["namespace"] = "default"
    with pytest.raises(SealError, match="SealedSecret default/n: key 'k'"):
        unseal_manifest(doc, [key_2048])


def test_manifest_with_empty_encrypted_data(key_2048: rsa.RSAPrivateKey) -> None:
    doc = {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": "n", "namespace": "ns"},
        "spec": {"encryptedData": {}},
    }
    assert unseal_manifest(doc, [key_2048]) == {}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.update(apiVersion="bitnami.com/v1"), "expected apiVersion"),
        (lambda d: d.update(kind="Secret"), "expected apiVersion"),
        (lambda d: d["spec"].pop("encryptedData"), "spec.encryptedData is missing"),
        (lambda d: d.update(spec={"data": "AgB"}), "deprecated spec.data"),
        (lambda d: d["spec"]["encryptedData"].update(password=42), "strings to strings"),
        (lambda d: d.update(spec=["x"]), "spec must be a mapping"),
        (lambda d: d["metadata"].update(annotations=["x"]), "annotations must be a mapping"),
        (lambda d: d["metadata"].update(name=7), "metadata.name must be a string"),
        (lambda d: d["spec"]["encryptedData"].update(password="AgA="), "data is too short"),
        (lambda d: d["spec"]["encryptedData"].update(password="A$$="), "not valid base64"),
    ],
)
def test_manifest_malformed_is_refused(
    manifest: dict[str, Any],
    manifest_keys: list[rsa.RSAPrivateKey],
    change: Callable[[dict[str, Any]], object],
    reason: str,
) -> None:
    change(manifest)
    with pytest.raises(SealError, match=reason) as info:
        unseal_manifest(manifest, manifest_keys)
    for leaked in ("AgB", "AgA=", "A$$="):
        assert leaked not in str(info.value)


# --- seal_value against the independent reference --------------------------------------------

_PLACES = [
    ("payments", "api-keys"),
    ("payments", "api-keys-2"),
    ("payments-2", "api-keys"),
    ("pay", "ments/api-keys"),
    ("", ""),
]


@pytest.mark.parametrize("scope", list(Scope), ids=[s.value for s in Scope])
def test_project_seal_opens_with_reference(any_key: rsa.RSAPrivateKey, scope: Scope) -> None:
    value = b's3cr3t \x00\xff\n---\n"quoted" \xc3\xbc'
    sealed = seal_value(any_key.public_key(), value, label=label_for("payments", "api-keys", scope))
    right = reference_label("payments", "api-keys", scope.value)
    assert reference_unseal(any_key, sealed, right) == value

    wrong_labels = {
        reference_label(ns, name, other.value) for ns, name in _PLACES for other in Scope
    } - {right}
    assert wrong_labels
    for wrong in wrong_labels:
        with pytest.raises(ReferenceUnsealError):
            reference_unseal(any_key, sealed, wrong)


@pytest.mark.parametrize("scope", list(Scope), ids=[s.value for s in Scope])
def test_reference_seal_opens_with_project(any_key: rsa.RSAPrivateKey, scope: Scope) -> None:
    sealed = reference_seal(any_key.public_key(), b"value", reference_label("ns", "n", scope.value))
    assert unseal_value([any_key], sealed, label=label_for("ns", "n", scope)) == b"value"


def test_project_seal_fails_with_wrong_key(
    key_2048: rsa.RSAPrivateKey, other_key_2048: rsa.RSAPrivateKey
) -> None:
    sealed = seal_value(key_2048.public_key(), b"value", label=b"ns/n")
    with pytest.raises(ReferenceUnsealError):
        reference_unseal(other_key_2048, sealed, b"ns/n")
    with pytest.raises(SealError, match="no key could decrypt secret"):
        unseal_value([other_key_2048], sealed, label=b"ns/n")


@pytest.mark.parametrize("length", [0, 1, 31, 100, 4096])
def test_sealed_length_and_prefix(any_key: rsa.RSAPrivateKey, length: int) -> None:
    modulus_bytes = any_key.key_size // 8
    sealed = seal_value(any_key.public_key(), b"x" * length, label=b"")
    decoded = base64.b64decode(sealed, validate=True)
    assert len(decoded) == 2 + modulus_bytes + length + 16
    assert len(decoded) == sealed_length(any_key.key_size, length)
    assert decoded[:2] == modulus_bytes.to_bytes(2, "big")
    assert base64.b64encode(decoded).decode() == sealed  # standard alphabet, padded, one line
    assert sealed.startswith("Ag" if any_key.key_size == 4096 else "AQ")


def test_seal_uses_injected_session_key(key_2048: rsa.RSAPrivateKey) -> None:
    session_key = bytes(range(100, 132))
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return session_key

    value = b"deterministic body"
    sealed = seal_value(key_2048.public_key(), value, label=b"ns/n", rng=rng)
    assert calls == [32]
    rsa_part, aes_part = reference_split(sealed)
    assert aes_part == AESGCM(session_key).encrypt(bytes(12), value, None)
    assert reference_unseal(key_2048, sealed, b"ns/n") == value
    # OAEP is randomized on its own, so even a fixed session key gives a new RSA part.
    again, _ = reference_split(seal_value(key_2048.public_key(), value, label=b"ns/n", rng=rng))
    assert again != rsa_part


def test_seal_is_randomized(key_2048: rsa.RSAPrivateKey) -> None:
    public = key_2048.public_key()
    assert seal_value(public, b"same", label=b"") != seal_value(public, b"same", label=b"")


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_seal_refuses_wrong_session_key_size(key_2048: rsa.RSAPrivateKey, size: int) -> None:
    with pytest.raises(ValueError, match="32 expected"):
        seal_value(key_2048.public_key(), b"v", label=b"", rng=lambda _n: b"k" * size)


_SPECIAL_VALUES = [
    b"",
    b"---",
    b"---\nkind: Secret\n...\n",
    b"line1\nline2\r\n",
    b"'single' \"double\" `back`",
    "ünïcødé ✓ 🔑".encode(),
    b"\x00" * 64,
    bytes(range(256)),
    b"{{ .password }}",
]

VALUES = st.one_of(
    st.sampled_from(_SPECIAL_VALUES),
    st.binary(max_size=2048),
    st.text(max_size=256).map(lambda s: s.encode("utf-8")),
)


@settings(max_examples=60, deadline=None)
@given(value=VALUES, scope=st.sampled_from(list(Scope)), namespace=st.sampled_from(["a", "b-c"]))
def test_property_seal_then_unseal_is_identity(
    key_2048: rsa.RSAPrivateKey, value: bytes, scope: Scope, namespace: str
) -> None:
    label = label_for(namespace, "name", scope)
    sealed = seal_value(key_2048.public_key(), value, label=label)
    assert len(base64.b64decode(sealed)) == sealed_length(2048, len(value))
    assert unseal_value([key_2048], sealed, label=label) == value
    assert reference_unseal(key_2048, sealed, label) == value


# --- unseal_value errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ciphertext",
    [
        "",
        base64.b64encode(b"\x02").decode(),
        base64.b64encode(b"\x02\x00" + b"z" * 511).decode(),
        base64.b64encode(b"\xff\xff" + b"z" * 1000).decode(),
    ],
    ids=["empty", "one-byte", "rsa-part-cut", "huge-prefix"],
)
def test_unseal_too_short(key_2048: rsa.RSAPrivateKey, ciphertext: str) -> None:
    with pytest.raises(SealError, match="data is too short") as info:
        unseal_value([key_2048], ciphertext, label=b"")
    if ciphertext:
        assert ciphertext[:8] not in str(info.value)


def test_unseal_refuses_bad_base64(key_2048: rsa.RSAPrivateKey) -> None:
    for text in ("not base64!", "AgB", "Ag-_"):
        with pytest.raises(SealError, match="not valid base64") as info:
            unseal_value([key_2048], text, label=b"")
        assert text not in str(info.value)


def test_unseal_accepts_line_wrapped_base64(key_2048: rsa.RSAPrivateKey) -> None:
    sealed = seal_value(key_2048.public_key(), b"wrapped", label=b"")
    wrapped = "\n".join(sealed[i : i + 76] for i in range(0, len(sealed), 76)) + "\r\n"
    assert unseal_value([key_2048], wrapped, label=b"") == b"wrapped"


def test_unseal_without_keys_or_with_tampered_data(key_2048: rsa.RSAPrivateKey) -> None:
    sealed = seal_value(key_2048.public_key(), b"payload", label=b"x")
    with pytest.raises(SealError, match="no key could decrypt secret"):
        unseal_value([], sealed, label=b"x")
    raw = bytearray(base64.b64decode(sealed))
    raw[-1] ^= 1
    with pytest.raises(SealError, match="no key could decrypt secret"):
        unseal_value([key_2048], base64.b64encode(bytes(raw)).decode(), label=b"x")
    cut = base64.b64encode(bytes(raw[:-17])).decode()
    with pytest.raises(SealError, match="no key could decrypt secret"):
        unseal_value([key_2048], cut, label=b"x")


def test_unseal_tries_keys_in_any_order(
    key_2048: rsa.RSAPrivateKey, key_4096: rsa.RSAPrivateKey, other_key_2048: rsa.RSAPrivateKey
) -> None:
    sealed = seal_value(key_4096.public_key(), b"v", label=b"")
    for keys in ([key_2048, other_key_2048, key_4096], [key_4096, key_2048]):
        assert unseal_value(keys, sealed, label=b"") == b"v"


# --- labels and annotations ------------------------------------------------------------------


def test_label_for() -> None:
    assert label_for("payments", "api-keys", Scope.STRICT) == b"payments/api-keys"
    assert label_for("payments", "api-keys", Scope.NAMESPACE_WIDE) == b"payments"
    assert label_for("payments", "api-keys", Scope.CLUSTER_WIDE) == b""


def test_scope_annotations() -> None:
    assert scope_annotations(Scope.STRICT) == {}
    assert scope_annotations(Scope.NAMESPACE_WIDE) == {
        "sealedsecrets.bitnami.com/namespace-wide": "true"
    }
    assert scope_annotations(Scope.CLUSTER_WIDE) == {
        "sealedsecrets.bitnami.com/cluster-wide": "true"
    }
    for scope in Scope:
        assert scope_from_annotations(scope_annotations(scope)) is scope
    scope_annotations(Scope.STRICT)["x"] = "y"
    assert scope_annotations(Scope.STRICT) == {}


# --- certificates ----------------------------------------------------------------------------

_VALID_FROM = datetime(2027, 1, 1, tzinfo=UTC)
_VALID_TO = datetime(2030, 1, 1, tzinfo=UTC)


def test_certificate_fields(key_2048: rsa.RSAPrivateKey) -> None:
    pem = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO, cn="c"))
    cert = load_certificate(pem, source="certs/dev.pem", now=NOW)
    assert isinstance(cert, Certificate)
    spki = key_2048.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert cert.fingerprint == hashlib.sha256(spki).hexdigest()
    assert cert.key_bits == 2048
    assert cert.not_before == _VALID_FROM
    assert cert.not_after == _VALID_TO
    assert cert.not_before.tzinfo is not None
    assert cert.not_after.tzinfo is not None
    assert cert.public_key.public_numbers() == key_2048.public_key().public_numbers()
    with pytest.raises(AttributeError):
        cert.key_bits = 1  # type: ignore[misc]


def test_certificate_fingerprint_is_per_key_not_per_certificate(
    key_2048: rsa.RSAPrivateKey,
) -> None:
    first = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO, cn="a"))
    second = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO, cn="b"))
    assert first != second
    a = load_certificate(first, source="a", now=NOW)
    b = load_certificate(second, source="b", now=NOW)
    assert a.fingerprint == b.fingerprint


def test_certificate_first_one_wins(
    key_2048: rsa.RSAPrivateKey, other_key_2048: rsa.RSAPrivateKey
) -> None:
    first = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO))
    second = _pem(_make_cert(other_key_2048, not_before=_VALID_FROM, not_after=_VALID_TO))
    cert = load_certificate(b"leading text\n" + first + second, source="bundle", now=NOW)
    assert cert.fingerprint == public_key_fingerprint(key_2048.public_key())

    expired = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_FROM))
    with pytest.raises(SealError, match="expired"):
        load_certificate(expired + second, source="bundle", now=NOW)


def test_certificate_after_a_private_key_block(key_2048: rsa.RSAPrivateKey) -> None:
    key_pem = key_2048.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pem = key_pem + _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO))
    assert load_certificate(pem, source="tls", now=NOW).key_bits == 2048


def test_certificate_expired(key_2048: rsa.RSAPrivateKey) -> None:
    ended = datetime(2027, 3, 4, 5, 6, 7, tzinfo=UTC)
    pem = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=ended))
    with pytest.raises(SealError) as info:
        load_certificate(pem, source="clusters/prod-use1/cert.pem", now=NOW)
    message = str(info.value)
    assert message.startswith("clusters/prod-use1/cert.pem: ")
    assert "expired on 2027-03-04T05:06:07Z" in message
    assert _body(pem).decode() not in message
    assert load_certificate(pem, source="x", now=ended).not_after == ended


def test_certificate_not_yet_valid(key_2048: rsa.RSAPrivateKey) -> None:
    starts = datetime(2028, 2, 3, 4, 5, 6, tzinfo=UTC)
    pem = _pem(_make_cert(key_2048, not_before=starts, not_after=_VALID_TO))
    with pytest.raises(SealError) as info:
        load_certificate(pem, source="prod-euw1", now=NOW)
    message = str(info.value)
    assert message.startswith("prod-euw1: ")
    assert "not valid before 2028-02-03T04:05:06Z" in message
    assert _body(pem).decode() not in message
    assert load_certificate(pem, source="x", now=starts).not_before == starts


def test_certificate_validity_compares_instants_not_wall_clocks(
    key_2048: rsa.RSAPrivateKey,
) -> None:
    ended = datetime(2027, 3, 4, 12, 0, tzinfo=UTC)
    pem = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=ended))
    plus_two = timezone(timedelta(hours=2))
    still_valid = datetime(2027, 3, 4, 13, 30, tzinfo=plus_two)  # 11:30 UTC
    assert load_certificate(pem, source="x", now=still_valid).not_after == ended
    with pytest.raises(SealError, match="expired"):
        load_certificate(pem, source="x", now=datetime(2027, 3, 4, 14, 1, tzinfo=plus_two))


def test_certificate_pin_is_the_sha256_of_the_certificate_der(
    key_2048: rsa.RSAPrivateKey, other_key_2048: rsa.RSAPrivateKey
) -> None:
    cert = _make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO)
    pem = _pem(cert)
    der_sha256 = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert certificate_sha256(pem, source="x") == der_sha256
    assert load_certificate(pem, source="x", now=NOW, sha256=der_sha256).sha256 == der_sha256
    colons = ":".join(der_sha256[i : i + 2] for i in range(0, 64, 2)).upper()
    assert normalize_sha256(colons) == der_sha256  # as `openssl x509 -fingerprint -sha256`
    assert normalize_sha256(der_sha256[:-1]) is None
    assert normalize_sha256("g" * 64) is None

    swapped = _pem(_make_cert(other_key_2048, not_before=_VALID_FROM, not_after=_VALID_TO))
    with pytest.raises(SealError) as info:
        load_certificate(swapped, source="certs/prod.pem", now=NOW, sha256=der_sha256)
    actual = certificate_sha256(swapped, source="x")
    assert str(info.value).startswith(
        f"certs/prod.pem: certificate SHA-256 is {actual}, not the pinned {der_sha256}"
    )
    reissued = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO, cn="b"))
    with pytest.raises(SealError, match="not the pinned"):  # same key, another certificate
        load_certificate(reissued, source="x", now=NOW, sha256=der_sha256)


def test_certificate_requires_aware_now(key_2048: rsa.RSAPrivateKey) -> None:
    pem = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO))
    with pytest.raises(ValueError, match="timezone-aware"):
        load_certificate(pem, source="x", now=datetime(2027, 6, 1))


def test_certificate_not_rsa() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = _pem(_make_cert(key, not_before=_VALID_FROM, not_after=_VALID_TO))
    with pytest.raises(SealError) as info:
        load_certificate(pem, source="certs/edge.pem", now=NOW)
    message = str(info.value)
    assert message.startswith("certs/edge.pem: ")
    assert "not RSA" in message
    assert "EC" in message
    assert _body(pem).decode() not in message


def test_certificate_rsa_key_too_small() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point of the test
    pem = _pem(_make_cert(small, not_before=_VALID_FROM, not_after=_VALID_TO))
    with pytest.raises(SealError, match=r"^small\.pem: RSA key of 1024 bits is too small"):
        load_certificate(pem, source="small.pem", now=NOW)


def _garbage(case: str, key: rsa.RSAPrivateKey) -> bytes:
    if case == "empty":
        return b""
    if case == "text":
        return b"hello world, definitely not a certificate"
    if case == "der":
        cert = _make_cert(key, not_before=_VALID_FROM, not_after=_VALID_TO)
        return cert.public_bytes(serialization.Encoding.DER)
    if case == "private-key-only":
        return _key_pem(key, serialization.PrivateFormat.PKCS8)
    assert case == "broken-block"
    return b"-----BEGIN CERTIFICATE-----\nTUlJQmJhZGNlcnRpZmljYXRl\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("case", ["empty", "text", "der", "private-key-only", "broken-block"])
def test_certificate_garbage(key_2048: rsa.RSAPrivateKey, case: str) -> None:
    pem = _garbage(case, key_2048)
    with pytest.raises(SealError) as info:
        load_certificate(pem, source="staging-use1", now=NOW)
    assert str(info.value) == "staging-use1: not a PEM certificate"


# --- private keys ----------------------------------------------------------------------------


def _key_pem(key: Any, fmt: serialization.PrivateFormat, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem: bytes = key.private_bytes(serialization.Encoding.PEM, fmt, encryption)
    return pem


def test_private_keys_pkcs1_and_pkcs8_several_blocks(
    key_2048: rsa.RSAPrivateKey, other_key_2048: rsa.RSAPrivateKey
) -> None:
    pkcs1 = _key_pem(key_2048, serialization.PrivateFormat.TraditionalOpenSSL)
    pkcs8 = _key_pem(other_key_2048, serialization.PrivateFormat.PKCS8)
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert pkcs8.startswith(b"-----BEGIN PRIVATE KEY-----")
    cert = _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO))
    keys = load_private_keys(pkcs1 + cert + b"\n" + pkcs8, source="backup.pem")
    assert [k.private_numbers() for k in keys] == [
        key_2048.private_numbers(),
        other_key_2048.private_numbers(),
    ]
    assert len(load_private_keys(pkcs8.replace(b"\n", b"\r\n"), source="crlf.pem")) == 1


def test_private_keys_refused(key_2048: rsa.RSAPrivateKey) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pkcs1 = _key_pem(key_2048, serialization.PrivateFormat.TraditionalOpenSSL)
    lines = pkcs1.splitlines(keepends=True)
    broken = b"".join([lines[0], lines[1][:-5] + b"\n", *lines[3:]])
    cases = {
        b"": "no PEM private key found",
        b"just text": "no PEM private key found",
        _pem(_make_cert(key_2048, not_before=_VALID_FROM, not_after=_VALID_TO)): (
            "no PEM private key found"
        ),
        _key_pem(ec_key, serialization.PrivateFormat.PKCS8): "block 1 is not an RSA private key",
        _key_pem(ec_key, serialization.PrivateFormat.TraditionalOpenSSL): (
            r"block 1 \(EC PRIVATE KEY\) is not supported"
        ),
        _key_pem(key_2048, serialization.PrivateFormat.PKCS8, b"pw"): (
            r"block 1 \(ENCRYPTED PRIVATE KEY\) is not supported"
        ),
        pkcs1 + broken: "block 2 is not a readable private key",
    }
    for pem, reason in cases.items():
        with pytest.raises(SealError, match=f"^keys/prod.key: .*{reason}") as info:
            load_private_keys(pem, source="keys/prod.key")
        if pem.startswith(b"-----"):
            assert _body(pem).decode() not in str(info.value)


# --- demo keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", DEMO_CLUSTERS)
def test_demo_key_pairs_match(cluster: str) -> None:
    cert_pem = (_ROOT / "examples" / "fleet" / "certs" / f"{cluster}.pem").read_bytes()
    key_pem = (_ROOT / "examples" / "demo-keys" / f"{cluster}.key").read_bytes()
    assert key_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    issued = x509.load_pem_x509_certificate(cert_pem).not_valid_before_utc
    cert = load_certificate(cert_pem, source=cluster, now=issued + timedelta(days=1))
    assert cert.key_bits == 4096
    assert cert.not_after - cert.not_before == timedelta(hours=87600)
    keys = load_private_keys(key_pem, source=cluster)
    assert [public_key_fingerprint(k.public_key()) for k in keys] == [cert.fingerprint]
    sealed = seal_value(cert.public_key, b"demo", label=b"demo/demo")
    assert sealed.startswith("Ag")
    assert unseal_value(keys, sealed, label=b"demo/demo") == b"demo"

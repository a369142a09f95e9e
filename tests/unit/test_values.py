"""The keyed hashes never change for the same input: every object rendered before keeps its
content hash (and its ciphertext) across versions. Checked against the first implementation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from secretsync.core.model import (
    Cluster,
    DesiredSecret,
    Literal,
    Location,
    Origin,
    Scope,
    StoreRef,
    Target,
    ValueRef,
)
from secretsync.core.values import KeyHasher, SecretValue, content_hash, keyed_digest
from secretsync.delivery import external, sealed


def reference_content_hash(key: bytes, parts: Mapping[str, object]) -> str:
    """secretsync's content hash as first written (a recursive encode, then json.dumps)."""

    def encode(obj: object) -> object:
        kind = type(obj)
        if kind is str or kind is int or kind is bool or obj is None:
            return obj
        if isinstance(obj, SecretValue):
            return {"$b": base64.b64encode(obj.reveal()).decode("ascii")}
        if isinstance(obj, bytes):
            return {"$b": base64.b64encode(obj).decode("ascii")}
        if isinstance(obj, dict | Mapping):
            return {str(k): encode(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [encode(v) for v in obj]
        return obj

    blob = json.dumps(encode(parts), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hmac.new(key, blob, hashlib.sha256).hexdigest()


LEAVES = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.booleans(),
    st.none(),
    st.binary(max_size=20),
    st.binary(max_size=20).map(SecretValue),
)
TREES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4).map(MappingProxyType),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100), st.dictionaries(st.text(max_size=8), TREES, max_size=6))
def test_content_hash_is_the_first_implementations(key: bytes, parts: dict[str, object]) -> None:
    assert content_hash(key, parts) == reference_content_hash(key, parts)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100), st.text(max_size=12), st.binary(max_size=40))
def test_key_hash_is_one_hmac_over_context_name_and_value(
    key: bytes, name: str, value: bytes
) -> None:
    context = {"delivery": "sealed", "label": "bnMvbg==", "scope": "strict"}
    blob = json.dumps(context, sort_keys=True, separators=(",", ":")).encode()
    raw = name.encode()
    message = len(blob).to_bytes(4, "big") + blob + len(raw).to_bytes(4, "big") + raw + value
    want = hmac.new(key, message, hashlib.sha256).hexdigest()[:32]
    assert KeyHasher(key, context).hash(name, SecretValue(value)) == want


TEXT = st.text(max_size=12)
STRINGS = st.dictionaries(TEXT, TEXT, max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        Target,
        name=TEXT,
        namespace=TEXT,
        type=TEXT,
        scope=st.sampled_from(Scope),
        labels=STRINGS,
        annotations=STRINGS,
        immutable=st.booleans(),
    ),
    TEXT,
    TEXT,
    STRINGS,
    STRINGS,
)
def test_sealed_content_hash_written_directly_is_the_generic_one(
    target: Target,
    cluster: str,
    fleet_secret: str,
    key_hashes: dict[str, str],
    versions: dict[str, str],
) -> None:
    desired = DesiredSecret(
        fleet_secret=fleet_secret,
        cluster=Cluster(name=cluster, labels={}, delivery="sealed", origin=Origin("c.yaml", 1)),
        target=target,
        data={},
        origin=Origin("s.yaml", 1),
    )
    fingerprint, label = "ab" * 32, "bnMvbmFtZQ=="
    fast = sealed._sealed_json(desired, fingerprint, label, key_hashes, versions)
    generic = sealed._sealed_digest(desired, fingerprint, label, key_hashes, versions, key=b"k")
    assert keyed_digest(b"k", fast) == generic


PLANNED = st.one_of(
    st.builds(Literal, TEXT),
    st.builds(
        ValueRef,
        st.builds(
            Location,
            st.just("vault"),
            TEXT,
            TEXT,
            st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
        ),
        TEXT,
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        Target,
        name=TEXT,
        namespace=TEXT,
        type=TEXT,
        labels=STRINGS,
        annotations=STRINGS,
        immutable=st.booleans(),
    ),
    TEXT,
    st.dictionaries(TEXT, PLANNED, max_size=4),
    st.builds(StoreRef, kind=TEXT, name=TEXT),
    TEXT,
)
def test_external_content_hash_written_directly_is_the_generic_one(
    target: Target,
    cluster: str,
    data: dict[str, Literal | ValueRef],
    store: StoreRef,
    refresh: str,
) -> None:
    desired = DesiredSecret(
        fleet_secret="fs",
        cluster=Cluster(
            name=cluster,
            labels={},
            delivery="external",
            origin=Origin("c.yaml", 1),
            settings={"external": external.ExternalSettings(store_ref=store)},
        ),
        target=target,
        data=data,
        origin=Origin("s.yaml", 1),
        refresh_interval=refresh,
    )
    spec = external._external_spec(desired)[0]
    assert keyed_digest(b"k", external._external_json(desired)) == (
        external._external_generic(desired, spec, b"k")
    )

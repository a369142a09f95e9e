"""What every delivery renders: the `Rendered` object and its `RenderContext`, the metadata and
content-hash parts all deliveries share, the plaintext check of written bytes, the one YAML
serialization."""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from secretsync.core import errors
from secretsync.core.model import (
    ANNOTATION_CLUSTER,
    ANNOTATION_SOURCE_VERSIONS,
    LABEL_FLEET_SECRET,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    DesiredSecret,
    Literal,
    ObjectKey,
    Observed,
    RestartRef,
    Target,
    ValueRef,
)
from secretsync.core.values import SecretValue
from secretsync.delivery import emit, seal

type Manifest = dict[str, Any]


FORMAT = 1
"""Bumped whenever rendering changes shape, so every object is rendered anew once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendered:
    """One object ready for a sink. `needles` are the plaintext byte strings it must not hold
    (beyond what `standin`, the same object rendered with stand-in values, holds of them: see
    `holds_plaintext`)."""

    key: ObjectKey
    fleet_secret: str
    delivery: str  # the delivery kind's name
    kind: str
    content_hash: str
    key_hashes: Mapping[str, str]
    manifest: Manifest
    needles: tuple[bytes, ...] = ()
    resealed: int = 0
    restarts: tuple[RestartRef, ...] = ()
    adopt: bool = False
    standin: Callable[[], Manifest] | None = dataclasses.field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderContext:
    """Everything a renderer needs besides the DesiredSecret and its values."""

    hmac_key: bytes
    certificate: seal.Certificate | None = None
    previous: Observed | None = None
    rng: Callable[[int], bytes] | None = None
    versions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Vault `<mount>/<path>` -> KV version the values were read at: recorded on the object
    (an audit trail, and what lets `plan` say which refs moved to a new version)."""
    hashes: SealedHashes | None = None
    """`sealed_hashes` of this very object, when the caller has them already."""
    sealed: Mapping[str, str] | None = None
    """Ciphertexts the caller sealed already (elsewhere) for the keys `to_seal` named."""
    cache: RenderCache | None = None
    """What the renders of many objects share (the engine's); None: nothing is kept."""


class RenderCache:
    """What renders of many objects share, owned by the one who renders them (the engine, for
    as long as it runs), not by a module: per Target object, the JSON parts of the content hash
    that only the target decides (one Target is shared by every cluster of a FleetSecret, so
    they are written once per FleetSecret)."""

    LIMIT = 65_536  # a long-running process sees new fleets: past this many, start over

    def __init__(self) -> None:
        # id() of a Target -> (that Target, its parts); holding the Target keeps its id unique
        self._parts: dict[int, tuple[Target, tuple[str, str, str]]] = {}

    def target_parts(
        self, target: Target, make: Callable[[Target], tuple[str, str, str]]
    ) -> tuple[str, str, str]:
        cached = self._parts.get(id(target))
        if cached is not None and cached[0] is target:
            return cached[1]
        parts = make(target)
        if len(self._parts) >= self.LIMIT:
            self._parts.clear()
        self._parts[id(target)] = (target, parts)
        return parts


class SealedHashes(NamedTuple):
    """A SealedSecret's content hash, per-key hashes and OAEP label."""

    digest: str
    key_hashes: dict[str, str]
    label: bytes


MAX_SECRET_BYTES = 1024 * 1024
"""The API server refuses a Secret whose data is larger than this."""


def check_size(desired: DesiredSecret, values: Mapping[str, SecretValue]) -> None:
    """Refuse values a Secret could not hold, before anything is sealed or sent."""
    total = sum(len(k) + len(v) for k, v in values.items())
    if total > MAX_SECRET_BYTES:
        largest = max(values, key=lambda k: len(values[k]))
        source = desired.data.get(largest)
        origin = f" from {source}" if isinstance(source, ValueRef) else ""
        raise errors.InvalidValue(
            f"{desired.target.namespace}/{desired.target.name}: values add up to {total} bytes, "
            f"over the {MAX_SECRET_BYTES} byte limit of a Secret (largest: key {largest!r}, "
            f"{len(values[largest])} bytes{origin})"
        )


@functools.lru_cache(maxsize=4096)
def _literal(text: str) -> SecretValue:
    """A `value:` literal (not a secret) as a value; the same literal recurs on many clusters."""
    return SecretValue.of(text)


def values_for(
    desired: DesiredSecret, resolved: Mapping[ValueRef, SecretValue]
) -> dict[str, SecretValue] | None:
    """The DesiredSecret's values by Secret key, or None when any ref is unresolved."""
    out: dict[str, SecretValue] = {}
    for key, planned in desired.data.items():
        if isinstance(planned, Literal):
            out[key] = _literal(planned.text)
        elif (value := resolved.get(planned)) is not None:
            out[key] = value
        else:
            return None
    return out


def _metadata(desired: DesiredSecret, annotations: Mapping[str, str]) -> dict[str, Any]:
    labels = {
        **desired.target.labels,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_FLEET_SECRET: desired.fleet_secret,
    }
    merged = {**desired.target.annotations, ANNOTATION_CLUSTER: desired.cluster.name, **annotations}
    return {
        "name": desired.target.name,
        "namespace": desired.target.namespace,
        "labels": dict(sorted(labels.items())),
        "annotations": dict(sorted(merged.items())),
    }


def _shape(desired: DesiredSecret) -> dict[str, object]:
    """What shapes the delivered object besides the data (part of every content hash)."""
    t = desired.target
    return {
        "cluster": desired.cluster.name,
        "fleetSecret": desired.fleet_secret,
        "namespace": t.namespace,
        "name": t.name,
        "type": t.type,
        "labels": dict(t.labels),
        "annotations": dict(t.annotations),
        "immutable": t.immutable,
    }


def _needles(values: Mapping[str, SecretValue], desired: DesiredSecret) -> tuple[bytes, ...]:
    secret_keys = {k for k, v in desired.data.items() if isinstance(v, ValueRef)}
    out: list[bytes] = []
    for key in sorted(secret_keys):
        out.extend(values[key].needles())
    return tuple(out)


def _versioned(parts: dict[str, object], versions: Mapping[str, str]) -> dict[str, object]:
    """Hash parts plus the source versions, when there are any (a version written anew with the
    same value changes the object's recorded version, nothing else)."""
    return {**parts, "versions": dict(versions)} if versions else parts


def _version_annotation(versions: Mapping[str, str]) -> dict[str, str]:
    return {ANNOTATION_SOURCE_VERSIONS: format_key_hashes(versions)} if versions else {}


def _kept(previous: Observed | None, key: str, key_hash: str) -> str | None:
    """The previous ciphertext of `key`, when its hash says the value is the same."""
    if previous is None:
        return None
    old = previous.encrypted.get(key)
    return old if old and previous.key_hashes.get(key) == key_hash else None


def _stand_in_text(size: int) -> bytes:
    """`size` random bytes of the base64 alphabet: a stand-in of the same length as a value or
    a ciphertext, that no value can be made to match on purpose."""
    return base64.b64encode(os.urandom(size))[:size]


def holds_plaintext(data: bytes, item: Rendered) -> bool:
    """Whether `data`, the bytes about to be written for `item`, hold a value `item` was built
    from (raw, base64 or JSON-escaped): `leaks` with the object's own needles and stand-in."""
    return leaks(data, item.needles, item.standin)


def leaks(data: bytes, needles: Sequence[bytes], standin: Callable[[], Manifest] | None) -> bool:
    """Whether `data` holds one of `needles` (values in their written forms) as a leak.

    A needle found in `data` is only a leak when it occurs more often there than in the same
    object rendered with stand-in values: a value may equal text the object holds anyway (a
    value `true` beside `immutable: true`, a value equal to its key's name), and that text says
    nothing about the value. Occurrences are counted overlapping, so a leak next to or across
    such text still adds one. Without a stand-in every occurrence is a leak. The stand-in is
    rendered only when a needle is found (rare): the common case costs one search per needle.
    """
    found = [needle for needle in needles if needle in data]
    if not found:
        return False
    if standin is None:
        return True
    baseline = dump_yaml(standin())
    return any(_occurrences(data, n) > _occurrences(baseline, n) for n in found)


def _occurrences(data: bytes, needle: bytes) -> int:
    count, at = 0, data.find(needle)
    while at != -1:
        count += 1
        at = data.find(needle, at + 1)
    return count


def _copy_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `_metadata`'s result (str values, dicts one level down): what `deepcopy`
    did, without its memo bookkeeping."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in meta.items()}


def dump_yaml(document: Mapping[str, object] | Sequence[object]) -> bytes:
    """The one serialization of every manifest: deterministic block YAML (`emit`)."""
    return emit.dump(document)


def format_key_hashes(key_hashes: Mapping[str, str]) -> str:
    """`key=hash,key=hash` (Secret keys and Vault paths never hold `=` or `,`)."""
    return ",".join(f"{k}={v}" for k, v in sorted(key_hashes.items()))


def parse_key_hashes(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and key:
            out[key] = value
    return out

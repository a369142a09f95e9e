"""DesiredSecret + resolved values → the object a cluster receives, with its keyed content hash.

Pure: one render function per delivery, picked from `RENDERERS`.

- `sealed`: a SealedSecret. Each key's ciphertext is kept from the previous object when that
  key's hash is unchanged (the hash binds the value, the key name, the certificate and the
  scope label), so unchanged values never churn Git.
- `external`: an ExternalSecret that names Vault paths and keys; it carries no values.
- `direct`: a plain Secret for the Kubernetes API, never for Git.

Every object carries the managed-by label, the fleet-secret label, the cluster annotation and
the content hash annotation.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from secretsync.core import errors
from secretsync.core.model import (
    ANNOTATION_CLUSTER,
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_KEY_HASHES,
    ANNOTATION_SOURCE_VERSIONS,
    LABEL_FLEET_SECRET,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Delivery,
    DesiredSecret,
    Literal,
    ObjectKey,
    Observed,
    RestartRef,
    Target,
    ValueRef,
)
from secretsync.core.values import (
    KeyHasher,
    SecretValue,
    content_hash,
    json_object,
    json_string,
    keyed_digest,
)
from secretsync.delivery import emit, seal

type Manifest = dict[str, Any]

SEALED_API = "bitnami.com/v1alpha1"
EXTERNAL_API = "external-secrets.io/v1"
FORMAT = 1
"""Bumped whenever rendering changes shape, so every object is rendered anew once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendered:
    """One object ready for a sink. `needles` are the plaintext byte strings it must not hold
    (beyond what `standin`, the same object rendered with stand-in values, holds of them: see
    `holds_plaintext`)."""

    key: ObjectKey
    fleet_secret: str
    delivery: Delivery
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


class SealedHashes(NamedTuple):
    """A SealedSecret's content hash, per-key hashes and OAEP label."""

    digest: str
    key_hashes: dict[str, str]
    label: bytes


class Render(Protocol):
    def __call__(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> Rendered: ...


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


def _certificate(desired: DesiredSecret, ctx: RenderContext) -> seal.Certificate:
    if ctx.certificate is None:
        raise errors.SealError(f"cluster {desired.cluster.name!r} has no sealing certificate")
    return ctx.certificate


def sealed_hashes(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> SealedHashes:
    """The hashes `render_sealed` gives the object (nothing is sealed)."""
    cert = _certificate(desired, ctx)
    if ctx.hashes is not None:
        return ctx.hashes
    key = ctx.hmac_key
    target = desired.target
    scope = target.scope
    label = seal.label_for(target.namespace, target.name, scope)
    b64 = base64.b64encode(label).decode("ascii")
    context = (
        f'{{"cert":{json_string(cert.fingerprint)},"delivery":"sealed",'
        f'"label":{json_string(b64)},"scope":{json_string(scope)}}}'
    )
    hasher = KeyHasher(key, None, blob=context.encode("ascii"))
    key_hashes = {name: hasher.hash(name, value) for name, value in sorted(values.items())}
    try:
        blob = _sealed_json(desired, cert.fingerprint, b64, key_hashes, ctx.versions)
        digest = keyed_digest(key, blob)
    except TypeError:  # not strings where the model says so: the generic encoder decides
        digest = _sealed_digest(desired, cert.fingerprint, b64, key_hashes, ctx.versions, key=key)
    return SealedHashes(digest, key_hashes, label)


def _sealed_digest(
    desired: DesiredSecret,
    fingerprint: str,
    b64_label: str,
    key_hashes: Mapping[str, str],
    versions: Mapping[str, str],
    *,
    key: bytes,
) -> str:
    """The content hash of a SealedSecret: what `_sealed_json` writes faster."""
    context = {"cert": fingerprint, "label": b64_label, "scope": desired.target.scope}
    return content_hash(
        key,
        _versioned(
            {
                "format": FORMAT,
                "kind": "SealedSecret",
                **_shape(desired),
                **context,
                "keys": dict(key_hashes),
            },
            versions,
        ),
    )


def _sealed_json(
    desired: DesiredSecret,
    fingerprint: str,
    b64_label: str,
    key_hashes: Mapping[str, str],
    versions: Mapping[str, str],
) -> bytes:
    """`canonical_json` of `_sealed_digest`'s parts, written directly (keys in sorted order):
    the content hash is computed for every object of every render, changed or not. A property
    test holds it equal to the generic encoder. TypeError when a field is not what the model
    says (the caller then uses the generic path)."""
    head, middle, tail = _target_json(desired.target)
    text = (
        f"{head}{json_string(fingerprint)},"
        f'"cluster":{json_string(desired.cluster.name)},'
        f'"fleetSecret":{json_string(desired.fleet_secret)}{middle}{json_object(key_hashes)},'
        f'"kind":"SealedSecret","label":{json_string(b64_label)}{tail}'
        + (f',"versions":{json_object(versions)}' if versions else "")
        + "}"
    )
    return text.encode("ascii")


_TARGETS: dict[int, tuple[Target, tuple[str, str, str]]] = {}


def _target_json(t: Target) -> tuple[str, str, str]:
    """The parts of `_sealed_json` that only the target decides (one Target object is shared
    by every cluster of a FleetSecret, so they are written once per FleetSecret)."""
    cached = _TARGETS.get(id(t))
    if cached is not None and cached[0] is t:
        return cached[1]
    if type(t.immutable) is not bool:
        raise TypeError("immutable")
    parts = (
        f'{{"annotations":{json_object(t.annotations)},"cert":',
        f',"format":{FORMAT:d},"immutable":{"true" if t.immutable else "false"},"keys":',
        f',"labels":{json_object(t.labels)},"name":{json_string(t.name)},'
        f'"namespace":{json_string(t.namespace)},"scope":{json_string(t.scope)},'
        f'"type":{json_string(t.type)}',
    )
    if len(_TARGETS) >= 65_536:  # a long-running process sees new fleets: start over
        _TARGETS.clear()
    _TARGETS[id(t)] = (t, parts)
    return parts


def content_hash_of(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> str:
    """The content hash `render` would give, without sealing anything."""
    check_size(desired, values)
    if desired.delivery is Delivery.SEALED:
        return sealed_hashes(desired, values, ctx=ctx).digest
    if desired.delivery is Delivery.EXTERNAL:
        try:
            return keyed_digest(ctx.hmac_key, _external_json(desired))
        except TypeError:
            return _external_generic(desired, _external_spec(desired)[0], ctx.hmac_key)
    return _direct_hashes(desired, values, ctx=ctx)[0]


def _kept(previous: Observed | None, key: str, key_hash: str) -> str | None:
    """The previous ciphertext of `key`, when its hash says the value is the same."""
    if previous is None:
        return None
    old = previous.encrypted.get(key)
    return old if old and previous.key_hashes.get(key) == key_hash else None


def to_seal(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> list[tuple[str, bytes]]:
    """(key, plaintext) of the values `render_sealed` would seal anew: those whose previous
    ciphertext cannot be kept. The label to seal them with is `sealed_hashes(...).label`."""
    hashes = sealed_hashes(desired, values, ctx=ctx)
    return [
        (key, value.reveal())
        for key, value in sorted(values.items())
        if _kept(ctx.previous, key, hashes.key_hashes[key]) is None
    ]


def render_sealed(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> Rendered:
    cert = _certificate(desired, ctx)
    scope = desired.target.scope
    hashes = sealed_hashes(desired, values, ctx=ctx)
    digest, key_hashes, label = hashes.digest, hashes.key_hashes, hashes.label
    encrypted: dict[str, str] = {}
    resealed = 0
    for key, value in sorted(values.items()):
        old = _kept(ctx.previous, key, key_hashes[key])
        if old is not None:
            encrypted[key] = old
            continue
        done = ctx.sealed.get(key) if ctx.sealed is not None else None
        if done is not None:
            encrypted[key] = done
        else:
            kwargs = {"rng": ctx.rng} if ctx.rng else {}
            encrypted[key] = seal.seal_value(cert.public_key, value.reveal(), label=label, **kwargs)
        resealed += 1
    annotations = {
        **seal.scope_annotations(scope),
        ANNOTATION_CONTENT_HASH: digest,
        ANNOTATION_KEY_HASHES: format_key_hashes(key_hashes),
        **_version_annotation(ctx.versions),
    }
    meta = _metadata(desired, annotations)
    template: dict[str, Any] = {
        "metadata": _copy_metadata(meta),
        "type": desired.target.type,
    }
    if desired.target.immutable:
        template["immutable"] = True
    manifest: Manifest = {
        "apiVersion": SEALED_API,
        "kind": "SealedSecret",
        "metadata": meta,
        "spec": {"encryptedData": encrypted, "template": template},
    }
    return Rendered(
        key=desired.key,
        fleet_secret=desired.fleet_secret,
        delivery=Delivery.SEALED,
        kind="SealedSecret",
        content_hash=digest,
        key_hashes=key_hashes,
        manifest=manifest,
        needles=_needles(values, desired),
        resealed=resealed,
        standin=functools.partial(_sealed_standin, desired, values, ctx, hashes, encrypted),
    )


def _stand_in_text(size: int) -> bytes:
    """`size` random bytes of the base64 alphabet: a stand-in of the same length as a value or
    a ciphertext, that no value can be made to match on purpose."""
    return base64.b64encode(os.urandom(size))[:size]


def _sealed_standin(
    desired: DesiredSecret,
    values: Mapping[str, SecretValue],
    ctx: RenderContext,
    hashes: SealedHashes,
    encrypted: Mapping[str, str],
) -> Manifest:
    """The SealedSecret rendered again with every value replaced by a random stand-in of the
    same length, and every ciphertext sealed anew by random text of the same length. Its hashes
    are the real object's (hex text that only the keyed HMAC decides) and so is the ciphertext
    it keeps from the previous object (written before, and sealed from the same value), so what
    differs between the two is what the values put into the text, directly or through a seal."""
    standin = RenderContext(
        hmac_key=ctx.hmac_key,
        certificate=ctx.certificate,
        previous=ctx.previous,
        versions=ctx.versions,
        hashes=hashes,
        sealed={key: _stand_in_text(len(text)).decode("ascii") for key, text in encrypted.items()},
    )
    stand = {key: SecretValue(_stand_in_text(len(value))) for key, value in values.items()}
    return render_sealed(desired, stand, ctx=standin).manifest


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


def escape_go_template(text: str) -> str:
    """Literal text for an ESO template: `{{` becomes an action printing `{{`."""
    return text.replace("{{", '{{"{{"}}')


def _external_spec(desired: DesiredSecret) -> tuple[dict[str, Any], dict[str, str]]:
    """The ExternalSecret's spec, and its literal keys (escaped) by name."""
    target = desired.target
    data: list[dict[str, Any]] = []
    literals: dict[str, str] = {}
    for key, planned in sorted(desired.data.items()):
        if isinstance(planned, Literal):
            literals[key] = escape_go_template(planned.text)
            continue
        remote: dict[str, str] = {"key": planned.location.path, "property": planned.key}
        if planned.location.version is not None:
            remote["version"] = str(planned.location.version)
        data.append({"secretKey": key, "remoteRef": remote})
    template: dict[str, Any] = {
        "type": target.type,
        "engineVersion": "v2",
        "mergePolicy": "Merge",
        "metadata": {
            "labels": dict(sorted({**target.labels, LABEL_MANAGED_BY: MANAGED_BY}.items())),
            "annotations": dict(
                sorted({**target.annotations, ANNOTATION_CLUSTER: desired.cluster.name}.items())
            ),
        },
    }
    if literals:
        template["data"] = literals
    target_spec: dict[str, Any] = {
        "name": target.name,
        "creationPolicy": "Owner",
        "deletionPolicy": "Retain",
    }
    if target.immutable:
        target_spec["immutable"] = True
    target_spec["template"] = template
    store = desired.store_ref
    spec: dict[str, Any] = {
        "refreshInterval": desired.refresh_interval,
        "secretStoreRef": {"kind": store.kind, "name": store.name},
        "target": target_spec,
        "data": data,
    }
    return spec, literals


def _external_digest(desired: DesiredSecret, spec: Mapping[str, Any], key: bytes) -> str:
    try:
        return keyed_digest(key, _external_json(desired))
    except TypeError:  # not strings where the model says so: the generic encoder decides
        return _external_generic(desired, spec, key)


def _external_generic(desired: DesiredSecret, spec: Mapping[str, Any], key: bytes) -> str:
    return content_hash(
        key, {"format": FORMAT, "kind": "ExternalSecret", **_shape(desired), "spec": spec}
    )


def _external_json(desired: DesiredSecret) -> bytes:
    """`canonical_json` of `_external_generic`'s parts, written directly (keys in sorted order,
    as `_sealed_json`; a property test holds the two equal). TypeError on an unexpected type."""
    t = desired.target
    if type(t.immutable) is not bool:
        raise TypeError("immutable")
    entries: list[str] = []
    literals: dict[str, str] = {}
    for key, planned in sorted(desired.data.items()):
        if isinstance(planned, Literal):
            literals[key] = escape_go_template(planned.text)
            continue
        loc = planned.location
        version = f',"version":{json_string(str(loc.version))}' if loc.version is not None else ""
        entries.append(
            f'{{"remoteRef":{{"key":{json_string(loc.path)},'
            f'"property":{json_string(planned.key)}{version}}},"secretKey":{json_string(key)}}}'
        )
    store = desired.store_ref
    labels = {**t.labels, LABEL_MANAGED_BY: MANAGED_BY}
    annotations = {**t.annotations, ANNOTATION_CLUSTER: desired.cluster.name}
    spec = (
        f'{{"data":[{",".join(entries)}],"refreshInterval":{json_string(desired.refresh_interval)},'
        f'"secretStoreRef":{{"kind":{json_string(store.kind)},"name":{json_string(store.name)}}},'
        f'"target":{{"creationPolicy":"Owner","deletionPolicy":"Retain",'
        + ('"immutable":true,' if t.immutable else "")
        + f'"name":{json_string(t.name)},"template":{{'
        + (f'"data":{json_object(literals)},' if literals else "")
        + f'"engineVersion":"v2","mergePolicy":"Merge","metadata":{{'
        f'"annotations":{json_object(annotations)},"labels":{json_object(labels)}}},'
        f'"type":{json_string(t.type)}}}}}}}'
    )
    text = (
        f'{{"annotations":{json_object(t.annotations)},'
        f'"cluster":{json_string(desired.cluster.name)},'
        f'"fleetSecret":{json_string(desired.fleet_secret)},"format":{FORMAT:d},'
        f'"immutable":{"true" if t.immutable else "false"},"kind":"ExternalSecret",'
        f'"labels":{json_object(t.labels)},"name":{json_string(t.name)},'
        f'"namespace":{json_string(t.namespace)},"spec":{spec},"type":{json_string(t.type)}}}'
    )
    return text.encode("ascii")


def render_external(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> Rendered:
    """Values are ignored: the ExternalSecret names where they are, ESO reads them."""
    del values
    spec, literals = _external_spec(desired)
    key_hashes = {
        entry["secretKey"]: content_hash(ctx.hmac_key, entry)[:32] for entry in spec["data"]
    } | {key: content_hash(ctx.hmac_key, {"literal": text})[:32] for key, text in literals.items()}
    digest = _external_digest(desired, spec, ctx.hmac_key)
    manifest: Manifest = {
        "apiVersion": EXTERNAL_API,
        "kind": "ExternalSecret",
        "metadata": _metadata(desired, {ANNOTATION_CONTENT_HASH: digest}),
        "spec": spec,
    }
    return Rendered(
        key=desired.key,
        fleet_secret=desired.fleet_secret,
        delivery=Delivery.EXTERNAL,
        kind="ExternalSecret",
        content_hash=digest,
        key_hashes=key_hashes,
        manifest=manifest,
    )


@functools.lru_cache(maxsize=8)
def direct_hasher(hmac_key: bytes) -> KeyHasher:
    """Keyed hashes of direct Secret values (also applied to observed data by the kube sink).
    One per key: a hasher is immutable, and building one costs a JSON dump and an HMAC."""
    return KeyHasher(hmac_key, {"delivery": "direct"})


def _direct_hashes(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> tuple[str, dict[str, str]]:
    """(content hash, per-key hashes) of a direct Secret, without building it."""
    hasher = direct_hasher(ctx.hmac_key)
    key_hashes = {key: hasher.hash(key, value) for key, value in sorted(values.items())}
    digest = content_hash(
        ctx.hmac_key,
        _versioned(
            {"format": FORMAT, "kind": "Secret", **_shape(desired), "keys": key_hashes},
            ctx.versions,
        ),
    )
    return digest, key_hashes


def render_direct(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> Rendered:
    digest, key_hashes = _direct_hashes(desired, values, ctx=ctx)
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(
            desired, {ANNOTATION_CONTENT_HASH: digest, **_version_annotation(ctx.versions)}
        ),
        "type": desired.target.type,
        "data": {
            key: base64.b64encode(value.reveal()).decode("ascii")
            for key, value in sorted(values.items())
        },
    }
    if desired.target.immutable:
        manifest["immutable"] = True
    return Rendered(
        key=desired.key,
        fleet_secret=desired.fleet_secret,
        delivery=Delivery.DIRECT,
        kind="Secret",
        content_hash=digest,
        key_hashes=key_hashes,
        manifest=manifest,
        needles=_needles(values, desired),
    )


RENDERERS: Mapping[Delivery, Render] = {
    Delivery.SEALED: render_sealed,
    Delivery.EXTERNAL: render_external,
    Delivery.DIRECT: render_direct,
}


def render(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> Rendered:
    check_size(desired, values)
    rendered = RENDERERS[desired.delivery](desired, values, ctx=ctx)
    if desired.restarts or desired.adopt:
        rendered = dataclasses.replace(rendered, restarts=desired.restarts, adopt=desired.adopt)
    return rendered


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

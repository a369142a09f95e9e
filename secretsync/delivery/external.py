"""The `external` delivery: an ExternalSecret naming the Vault paths and keys (it carries no
values)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secretsync.core.model import (
    ANNOTATION_CLUSTER,
    ANNOTATION_CONTENT_HASH,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Delivery,
    DesiredSecret,
    Literal,
)
from secretsync.core.values import SecretValue, content_hash, json_object, json_string, keyed_digest
from secretsync.delivery.rendered import (
    FORMAT,
    Manifest,
    RenderContext,
    Rendered,
    _metadata,
    _shape,
)

EXTERNAL_API = "external-secrets.io/v1"


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

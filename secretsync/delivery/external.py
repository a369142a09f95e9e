"""The `external` delivery: an ExternalSecret naming the Vault paths and keys (it carries no
values); its settings (`externalSecrets`: the store of each source) and its plan rules (one
source per object, at least one ref)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from secretsync.core import errors
from secretsync.core.model import (
    ANNOTATION_CLUSTER,
    ANNOTATION_CONTENT_HASH,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Cluster,
    DesiredSecret,
    Fleet,
    FleetSecret,
    Literal,
    Planned,
    StoreRef,
    ValueRef,
)
from secretsync.core.values import SecretValue, content_hash, json_object, json_string, keyed_digest
from secretsync.delivery import kinds
from secretsync.delivery.rendered import (
    FORMAT,
    Manifest,
    RenderContext,
    Rendered,
    _metadata,
    _shape,
)

EXTERNAL_SECRET: Final = kinds.ApiKind(
    "ExternalSecret", "external-secrets.io", "v1", "externalsecrets"
)

NAME: Final = "external"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalSettings:
    """A Cluster's `externalSecrets`: the External Secrets store of each Vault source."""

    store_ref: StoreRef = field(default_factory=StoreRef)  # the default source's
    store_refs: Mapping[str, StoreRef] = field(default_factory=dict)  # named source -> store

    def store_for(self, instance: str) -> StoreRef | None:
        """The store that reads the named source ("" the default source)."""
        return self.store_refs.get(instance) if instance else self.store_ref


NO_SETTINGS: Final = ExternalSettings()


def settings(cluster: Cluster) -> ExternalSettings:
    """`cluster`'s `externalSecrets` (the default store when it has none)."""
    return kinds.settings(cluster, NAME, ExternalSettings, NO_SETTINGS)


def store_of(desired: DesiredSecret) -> StoreRef:
    """The store of the source this object's refs read (`plan` allows one source per external
    object, with a store the cluster names)."""
    stores = settings(desired.cluster)
    for ref in desired.refs():
        return stores.store_for(ref.location.instance) or stores.store_ref
    return stores.store_ref


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
    store = store_of(desired)
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
    store = store_of(desired)
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
        "apiVersion": EXTERNAL_SECRET.api_version,
        "kind": EXTERNAL_SECRET.kind,
        "metadata": _metadata(desired, {ANNOTATION_CONTENT_HASH: digest}),
        "spec": spec,
    }
    return Rendered(
        key=desired.key,
        fleet_secret=desired.fleet_secret,
        delivery=NAME,
        kind=EXTERNAL_SECRET.kind,
        content_hash=digest,
        key_hashes=key_hashes,
        manifest=manifest,
    )


def _read_store_ref(ref: kinds.Map) -> StoreRef:
    """`{kind, name}` of an External Secrets store."""
    kind = ref.text("kind") or "ClusterSecretStore"
    if kind not in ("ClusterSecretStore", "SecretStore"):
        ref.ctx.error(
            ref.key_node("kind"), ref.field("kind"), "must be ClusterSecretStore or SecretStore"
        )
    store = StoreRef(kind=kind, name=ref.text("name", required=True) or "vault")
    ref.done()
    return store


class ExternalKind:
    name = NAME
    api_kind = EXTERNAL_SECRET
    in_git = True
    holds_values = False
    reads_values = False
    controller_writes_secret = False
    seals = False
    field = "externalSecrets"

    def read_settings(
        self, spec: kinds.Map, *, cluster: str, files: kinds.FleetFiles, chosen: bool
    ) -> ExternalSettings | None:
        external = spec.map(self.field)
        if external is None:
            return None
        store_ref = StoreRef()
        store_refs: dict[str, StoreRef] = {}
        ref = external.map("storeRef")
        if ref is not None:
            store_ref = _read_store_ref(ref)
        named = external.map("storeRefs")
        if named is not None:
            for name, (knode, _) in named.entries.items():
                if name == "default":  # the default source's store is `storeRef`
                    named.used.add(name)
                    named.ctx.error(
                        knode, named.field(name), "the default source's store is storeRef"
                    )
                    continue
                entry = named.map(name)
                if entry is not None:
                    store_refs[name] = _read_store_ref(entry)
        external.done()
        return ExternalSettings(store_ref=store_ref, store_refs=store_refs)

    def check_secret(
        self, *, secret: FleetSecret, cluster: Cluster, data: Mapping[str, Planned], fleet: Fleet
    ) -> list[errors.ConfigError]:
        def problem(message: str) -> errors.ConfigError:
            return errors.ConfigError(
                message, file=secret.origin.file, line=secret.origin.line, field="spec.data"
            )

        out: list[errors.ConfigError] = []
        sources = {v.location.source_key for v in data.values() if isinstance(v, ValueRef)}
        if len(sources) > 1:
            out.append(
                problem(
                    f"cluster {cluster.name!r} uses external delivery, whose ExternalSecret "
                    f"names one store: this FleetSecret reads {len(sources)} sources "
                    f"({', '.join(sorted(sources))}) for it"
                )
            )
        if not sources:
            out.append(
                problem(
                    f"cluster {cluster.name!r} uses external delivery, which needs at least "
                    "one vault: key (an ExternalSecret of literals only is refused by ESO)"
                )
            )
        return out

    def render(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> Rendered:
        return render_external(desired, values, ctx=ctx)

    def content_hash(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> str:
        try:
            return keyed_digest(ctx.hmac_key, _external_json(desired))
        except TypeError:
            return _external_generic(desired, _external_spec(desired)[0], ctx.hmac_key)

    def drift(self, obj: Mapping[str, Any]) -> dict[str, object]:
        spec = obj.get("spec") or {}
        target = spec.get("target") or {}
        template = target.get("template") or {}
        refs = [
            {
                "secretKey": item.get("secretKey"),
                "key": (item.get("remoteRef") or {}).get("key"),
                "property": (item.get("remoteRef") or {}).get("property"),
                "version": (item.get("remoteRef") or {}).get("version"),
            }
            for item in spec.get("data") or []
            if isinstance(item, Mapping)
        ]
        return {
            "refs": refs,
            "templateData": template.get("data") or {},
            "store": spec.get("secretStoreRef") or {},
            "target": target.get("name"),
        }


kinds.register(ExternalKind())

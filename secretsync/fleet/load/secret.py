"""The FleetSecret kind: value refs (vault, sops, literal), data, target, overlays, rollout."""

from __future__ import annotations

import yaml

from secretsync.core import selectors
from secretsync.core.model import (
    DataEntry,
    FleetSecret,
    LiteralSpec,
    Origin,
    Overlay,
    RestartRef,
    Scope,
    Target,
    ValueSpec,
)
from secretsync.fleet.load.schema import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DURATION,
    Header,
    read_selector,
    secret_key_problem,
    template_field,
)
from secretsync.fleet.load.yamlmarks import (
    Ctx,
    Map,
    as_map,
    enum_field,
)
from secretsync.sources import kinds


def read_value_spec(ctx: Ctx, node: yaml.Node, path: str) -> ValueSpec | None:
    """A data entry: `{value: ...}`, or a ref of exactly one registered source kind (each kind
    reads its own ref, see `sources.kinds`)."""
    m = as_map(ctx, node, path)
    if m is None:
        return None
    registered = kinds.kinds()
    given = [k for k in (*registered, "value") if k in m.entries]
    if len(given) != 1:
        names = ", ".join(registered)
        ctx.error(node, path, f"must have exactly one of {names} or value")
        for k in given:
            m.used.add(k)
        m.done()
        return None
    spec: ValueSpec | None = None
    if given[0] == "value":
        value = template_field(m, "value")
        spec = LiteralSpec(value) if value is not None else None
    else:
        ref = m.map(given[0])
        if ref is not None:
            spec = registered[given[0]].read_ref(ref)
            ref.done()
    m.done()
    return spec


def read_data(m: Map, key: str, *, required: bool) -> dict[str, DataEntry]:
    sub = m.map(key, required=required)
    out: dict[str, DataEntry] = {}
    if sub is None:
        return out
    for name, (knode, vnode) in sub.entries.items():
        sub.used.add(name)
        if problem := secret_key_problem(name):
            m.ctx.error(knode, sub.field(name), problem)
            continue
        spec = read_value_spec(m.ctx, vnode, sub.field(name))
        if spec is not None:
            out[name] = DataEntry(spec, Origin(m.ctx.file, knode.start_mark.line + 1))
    if required and not sub.entries:
        m.ctx.error(m.key_node(key), m.field(key), "must have at least one key")
    return out


def read_target(ctx: Ctx, m: Map | None) -> Target | None:
    if m is None:
        return None
    name = m.text("name", required=True)
    namespace = m.text("namespace", required=True)
    if name and (len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name)):
        ctx.error(m.key_node("name"), m.field("name"), "must be a DNS subdomain name")
    if namespace and (len(namespace) > 63 or not DNS_LABEL.fullmatch(namespace)):
        ctx.error(m.key_node("namespace"), m.field("namespace"), "must be a DNS label")
    type_ = m.text("type") or "Opaque"
    scope = enum_field(m, "scope", Scope, [s.value for s in Scope], default=Scope.STRICT)
    label_nodes = m.str_map("labels") or {}
    annotation_nodes = m.str_map("annotations") or {}
    for key, (value, knode) in label_nodes.items():
        if problem := selectors.label_key_problem(key) or selectors.label_value_problem(value):
            ctx.error(knode, f"{m.field('labels')}.{key}", problem)
    for key, (_, knode) in annotation_nodes.items():
        if problem := selectors.label_key_problem(key):
            ctx.error(
                knode, f"{m.field('annotations')}.{key}", problem.replace("label", "annotation")
            )
    if sum(len(k) + len(v) for k, (v, _) in annotation_nodes.items()) > 128 * 1024:
        ctx.error(m.key_node("annotations"), m.field("annotations"), "annotations exceed 128 KiB")
    labels = {k: v for k, (v, _) in label_nodes.items()}
    annotations = {k: v for k, (v, _) in annotation_nodes.items()}
    for key in labels:
        if key.startswith("secretsync.dev/") or key == "app.kubernetes.io/managed-by":
            ctx.error(m.key_node("labels"), m.field("labels"), f"{key!r} is reserved")
    for key in annotations:
        if key.startswith(("secretsync.dev/", "sealedsecrets.bitnami.com/")):
            ctx.error(m.key_node("annotations"), m.field("annotations"), f"{key!r} is reserved")
    immutable = m.flag("immutable") or False
    m.done()
    if not name or not namespace:
        return None
    return Target(
        name=name,
        namespace=namespace,
        type=type_,
        scope=scope,
        labels=labels,
        annotations=annotations,
        immutable=immutable,
    )


def read_fleet_secret(ctx: Ctx, header: Header) -> FleetSecret | None:
    spec = header.spec
    if not header.name or len(header.name) > 63 or selectors.label_value_problem(header.name):
        ctx.error(header.name_node, "metadata.name", "must be a valid label value (at most 63)")
    if spec is None:
        return None
    if "clusterSelector" not in spec.entries:
        ctx.error(spec.key or spec.node, "spec.clusterSelector", "required field is missing")
    selector = read_selector(spec.map("clusterSelector"))
    selector_key = spec.key_node("clusterSelector")
    selector_origin = Origin(
        ctx.file, selector_key.start_mark.line + 1 if selector_key is not None else spec.line
    )
    target_map = spec.map("target", required=True)
    target_line = target_map.line if target_map else header.origin.line
    target = read_target(ctx, target_map)
    data = read_data(spec, "data", required=True)
    overlays: list[Overlay] = []
    for item, path in spec.seq("overlays") or []:
        om = as_map(ctx, item, path)
        if om is None:
            continue
        has_sel = "clusterSelector" in om.entries
        has_list = "clusters" in om.entries
        if has_sel == has_list:
            ctx.error(item, path, "an overlay needs exactly one of clusterSelector or clusters")
        osel = read_selector(om.map("clusterSelector")) if has_sel else None
        names = om.str_list("clusters") if has_list else None
        odata = read_data(om, "data", required=True)
        om.done()
        overlays.append(
            Overlay(
                origin=Origin(ctx.file, om.line),
                data=odata,
                selector=osel,
                clusters=tuple(n for n, _ in names) if names is not None else None,
            )
        )
    restarts: list[RestartRef] = []
    rollout = spec.map("rollout")
    if rollout is not None:
        for item, path in rollout.seq("restart") or []:
            rm = as_map(ctx, item, path)
            if rm is None:
                continue
            kind = rm.text("kind", required=True) or ""
            if kind and kind not in ("Deployment", "StatefulSet", "DaemonSet"):
                ctx.error(
                    rm.key_node("kind"),
                    f"{path}.kind",
                    "must be Deployment, StatefulSet or DaemonSet",
                )
            name = rm.text("name", required=True) or ""
            rm.done()
            restarts.append(RestartRef(kind=kind, name=name))
        rollout.done()
    refresh = spec.text("refreshInterval") or "1h0m0s"
    if not DURATION.fullmatch(refresh):
        ctx.error(
            spec.key_node("refreshInterval"),
            "spec.refreshInterval",
            "must be a duration such as 1h, 30m or 1h0m0s",
        )
    adopt = spec.flag("adopt") or False
    allow_no_clusters = spec.flag("allowNoClusters") or False
    spec.done()
    if target is None:
        return None
    return FleetSecret(
        name=header.name,
        origin=header.origin,
        selector=selector,
        target=target,
        target_origin=Origin(ctx.file, target_line),
        data=data,
        overlays=tuple(overlays),
        restarts=tuple(restarts),
        refresh_interval=refresh,
        adopt=adopt,
        allow_no_clusters=allow_no_clusters,
        selector_origin=selector_origin,
    )

"""The Fleet document (`secretsync.yaml`): defaults, layout, output, sources, policies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import yaml

from secretsync.core import errors
from secretsync.core.model import (
    DEFAULT_DELIVERY,
    DeleteLimit,
    Fleet,
    Layout,
    Policies,
)
from secretsync.delivery import kinds as delivery_kinds
from secretsync.fleet.load.files import (
    FLEET_FILE,
    output_folder,
)
from secretsync.fleet.load.schema import (
    Header,
    documents,
)
from secretsync.fleet.load.yamlmarks import (
    INT,
    Ctx,
    Map,
    enum_field,
)
from secretsync.sources import kinds


def read_fleet(ctx: Ctx, header: Header, root: Path) -> Fleet:
    spec = header.spec
    kwargs: dict[str, object] = {}
    if spec is not None:
        defaults = spec.map("defaults")
        if defaults is not None:
            kwargs["default_delivery"] = enum_field(
                defaults,
                "delivery",
                delivery_kinds.known,
                list(delivery_kinds.kinds()),
                default=DEFAULT_DELIVERY,
            )
            defaults.done()
        inputs = Layout()
        layout = spec.map("layout")
        if layout is not None:
            inputs = kwargs["layout"] = Layout(
                clusters=layout.text("clusters") or "clusters",
                secrets=layout.text("secrets") or "secrets",
            )
            layout.done()
        output = spec.map("output")
        if output is not None:
            out_dir = output.text("dir")
            if out_dir is not None:
                try:
                    output_folder(root, out_dir, inputs)
                    kwargs["output_dir"] = out_dir.rstrip("/")
                except errors.ConfigError as exc:
                    ctx.error(output.key_node("dir"), output.field("dir"), exc.message)
            output.done()
        sources = spec.map("sources")
        if sources is not None:
            other: dict[str, object] = {}
            for kind in kinds.kinds().values():  # each kind reads its own settings
                for name, value in kind.read_settings(sources).items():
                    if name == "other_sources" and isinstance(value, dict):
                        other.update(value)
                    else:
                        kwargs[name] = value
            if other:
                kwargs["other_sources"] = other
            sources.done()
        policies = spec.map("policies")
        if policies is not None:
            forbidden = policies.str_list("forbiddenTypes")
            allow_cw = policies.flag("allowClusterWide")
            limit = _delete_limit(policies)
            kwargs["policies"] = Policies(
                forbidden_types=tuple(v for v, _ in forbidden)
                if forbidden is not None
                else Policies().forbidden_types,
                allow_cluster_wide=True if allow_cw is None else allow_cw,
                delete_limit=limit or Policies().delete_limit,
            )
            policies.done()
        spec.done()
    return Fleet(name=header.name, root=root, origin=header.origin, **kwargs)  # type: ignore[arg-type]


_PERCENT: Final = re.compile(r"(\d{1,3})%")


def _delete_limit(m: Map) -> DeleteLimit | None:
    """`deleteLimit`: a count of objects (0 or more) or a percentage string such as "25%"."""
    node = m.raw("deleteLimit")
    if node is None:
        return None
    if isinstance(node, yaml.ScalarNode) and node.tag == INT:
        count = int(str(node.value), 0)
        if count >= 0:
            return DeleteLimit(count=count)
    elif isinstance(node, yaml.ScalarNode) and (found := _PERCENT.fullmatch(str(node.value))):
        percent = int(found.group(1))
        if percent <= 100:
            return DeleteLimit(percent=percent)
    m.ctx.error(
        m.key_node("deleteLimit"),
        m.field("deleteLimit"),
        'must be a count of objects (0 or more) or a percentage such as "25%"',
    )
    return None


def fleet_document(ctx: Ctx, root: Path) -> Fleet:
    """The Fleet of secretsync.yaml, without clusters and secrets; raises when there is none."""
    headers = documents(root, FLEET_FILE, ctx)
    fleets = [h for h in headers if h.kind == "Fleet"]
    for h in headers:
        if h.kind != "Fleet":
            ctx.error(None, "kind", f"{FLEET_FILE} holds the Fleet only")
    if not fleets and not ctx.errors:
        ctx.errors.append(errors.ConfigError("no kind: Fleet document", file=FLEET_FILE))
    if len(fleets) > 1:
        ctx.errors.append(
            errors.ConfigError("more than one Fleet", file=FLEET_FILE, line=fleets[1].origin.line)
        )
    if not fleets:
        raise errors.ConfigErrors(ctx.errors)
    ctx.file = FLEET_FILE
    return read_fleet(ctx, fleets[0], root)

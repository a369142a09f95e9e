"""Fields shared by every kind: Kubernetes names, the document header (apiVersion, kind,
metadata), label selectors, template fields and credential paths of the machine."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from secretsync.core import errors, selectors, templating
from secretsync.core.model import (
    API_VERSION,
    Operator,
    Origin,
    Requirement,
    Selector,
)
from secretsync.fleet.load.files import (
    read_fleet_file,
)
from secretsync.fleet.load.yamlmarks import (
    Ctx,
    Map,
    as_map,
    compose,
)

# Names are checked with `fullmatch`: `$` would also accept a trailing newline ("web\n").
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+")


def is_dns_label(text: str) -> bool:
    """A Kubernetes DNS label (RFC 1123): namespaces and cluster names."""
    return len(text) <= 63 and DNS_LABEL.fullmatch(text) is not None


def is_dns_subdomain(text: str) -> bool:
    """A Kubernetes DNS subdomain (RFC 1123): object names."""
    return len(text) <= 253 and DNS_SUBDOMAIN.fullmatch(text) is not None


def secret_key_problem(key: str) -> str | None:
    """Why `key` cannot be a key of a Secret's data (the API server's rules), or None."""
    if len(key) > 253 or not _SECRET_KEY.fullmatch(key):
        return "invalid Secret key (1-253 characters: alphanumerics, '-', '_', '.')"
    if key in (".", "..") or key.startswith(".."):
        # a key is a file name where the Secret is mounted: Kubernetes refuses these
        return "invalid Secret key (it may not be '.' or '..' nor start with '..')"
    return None


@dataclass(slots=True)
class Header:
    kind: str
    name: str
    labels: dict[str, str]
    spec: Map | None
    name_node: yaml.Node | None
    origin: Origin


def read_header(ctx: Ctx, node: yaml.Node) -> Header | None:
    doc = as_map(ctx, node, "")
    if doc is None:
        return None
    api = doc.text("apiVersion", required=True)
    if api is not None and api != API_VERSION:
        ctx.error(doc.key_node("apiVersion"), "apiVersion", f"must be {API_VERSION}")
    kind = doc.text("kind", required=True) or ""
    if kind and kind not in ("Fleet", "Cluster", "FleetSecret"):
        ctx.error(doc.key_node("kind"), "kind", "must be Fleet, Cluster or FleetSecret")
        kind = ""
    meta = doc.map("metadata", required=True)
    name = ""
    labels: dict[str, str] = {}
    name_node = None
    if meta is not None:
        name = meta.text("name", required=True) or ""
        name_node = meta.key_node("name")
        for key, (value, knode) in (meta.str_map("labels") or {}).items():
            problem = selectors.label_key_problem(key) or selectors.label_value_problem(value)
            if problem:
                ctx.error(knode, f"metadata.labels.{key}", problem)
            labels[key] = value
        meta.str_map("annotations")
        meta.done()
    spec = doc.map("spec", required=True)
    doc.done()
    return Header(kind, name, labels, spec, name_node, Origin(ctx.file, doc.line))


def read_selector(m: Map | None) -> Selector:
    if m is None:
        return Selector()
    reqs: list[Requirement] = []
    for key, (value, knode) in (m.str_map("matchLabels") or {}).items():
        problem = selectors.label_key_problem(key) or selectors.label_value_problem(value)
        if problem:
            m.ctx.error(knode, f"{m.path}.matchLabels.{key}", problem)
        reqs.append(Requirement(key, Operator.IN, (value,)))
    for item, path in m.seq("matchExpressions") or []:
        expr = as_map(m.ctx, item, path)
        if expr is None:
            continue
        key = expr.text("key", required=True) or ""
        if key and (problem := selectors.label_key_problem(key)):
            m.ctx.error(expr.key_node("key"), f"{path}.key", problem)
        op_text = expr.text("operator", required=True)
        op: Operator | None = None
        if op_text is not None:
            try:
                op = Operator(op_text)
            except ValueError:
                m.ctx.error(
                    expr.key_node("operator"),
                    f"{path}.operator",
                    f"must be one of: {', '.join(o.value for o in Operator)}",
                )
        values = [v for v, _ in expr.str_list("values") or []]
        if op in (Operator.IN, Operator.NOT_IN) and not values:
            m.ctx.error(item, f"{path}.values", f"operator {op} needs at least one value")
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            m.ctx.error(expr.key_node("values"), f"{path}.values", f"operator {op} takes no values")
        expr.done()
        if op is not None and key:
            reqs.append(Requirement(key, op, tuple(values)))
    m.done()
    return Selector(tuple(reqs))


def template_field(m: Map, key: str, *, required: bool = True) -> str | None:
    value = m.text(key, required=required, scalar=key == "value")
    if value is not None:
        for problem in templating.check(value):
            m.ctx.error(m.key_node(key), m.field(key), problem)
    return value


def machine_path(m: Map, key: str) -> str | None:
    """A credential path on the machine secretsync runs on (a kubeconfig, a Vault token, JWT
    or AppRole file). It must be absolute and lie outside the fleet repo: the repo's writers
    must not choose what secretsync reads as a credential, nor a kubeconfig whose server,
    files and credential plugins secretsync would use. An error keeps the text, so that one
    mistake is reported once."""
    text = m.text(key)
    if text is None:
        return None
    if not os.path.isabs(text):
        m.ctx.error(
            m.key_node(key),
            m.field(key),
            f"{text!r} must be an absolute path: a file of the machine secretsync runs on, "
            "outside the fleet repo",
        )
    elif m.ctx.root is not None:
        root = m.ctx.root.resolve()
        try:
            real = Path(text).resolve()
        except (OSError, RuntimeError):  # a symlink loop: not inside the repo, and not usable
            return text
        if real == root or root in real.parents:
            m.ctx.error(
                m.key_node(key),
                m.field(key),
                f"{text!r} lies inside the fleet repo: credentials and kubeconfigs are the "
                "operator's files on the machine, never fleet content",
            )
    return text


def documents(root: Path, rel: str, ctx: Ctx) -> list[Header]:
    ctx.file = rel
    ctx.nodes = 0
    try:
        nodes = compose(read_fleet_file(root, rel), file=rel)
        return [h for node in nodes if (h := read_header(ctx, node)) is not None]
    except errors.ConfigError as exc:
        ctx.errors.append(exc)
        return []

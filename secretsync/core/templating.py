"""`{{ cluster.name }}` and `{{ cluster.labels.<key> }}` in fleet strings — nothing else.

`check` finds syntax errors when the fleet is loaded; `render` fills a string for one cluster
and raises `TemplateError` for a label that cluster does not have (never an empty string).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from secretsync.core import selectors

_EXPR = re.compile(r"\{\{(.*?)\}\}")
_LABELS = "cluster.labels."


class TemplateError(ValueError):
    """A template names something other than cluster.name or an existing cluster label."""


def _parse(expr: str) -> str | None:
    """The label key of `cluster.labels.<key>`, "" for cluster.name, None when invalid."""
    expr = expr.strip()
    if expr == "cluster.name":
        return ""
    key = expr.removeprefix(_LABELS)
    if key != expr and selectors.label_key_problem(key) is None:
        return key
    return None


def check(text: str) -> list[str]:
    """Syntax problems in `text` (empty when it is a valid template or plain text)."""
    problems = []
    for m in _EXPR.finditer(text):
        if _parse(m.group(1)) is None:
            problems.append(
                f"template {{{{{m.group(1)}}}}} is not allowed: only cluster.name and "
                "cluster.labels.<key> may be used"
            )
    rest = _EXPR.sub("", text)
    if "{{" in rest or "}}" in rest:
        problems.append("unbalanced '{{' or '}}' in template")
    return problems


def has_template(text: str) -> bool:
    return "{{" in text


@functools.lru_cache(maxsize=4096)
def _compile(text: str) -> tuple[str | tuple[str | None, str], ...]:
    """`text` split into literal parts and (label key | "" for the name | None, expression)."""
    parts: list[str | tuple[str | None, str]] = []
    pos = 0
    for m in _EXPR.finditer(text):
        parts.append(text[pos : m.start()])
        parts.append((_parse(m.group(1)), m.group(1)))
        pos = m.end()
    parts.append(text[pos:])
    return tuple(parts)


def render(text: str, *, cluster_name: str, labels: Mapping[str, str]) -> str:
    """Fill every expression for one cluster (each distinct text is parsed once)."""
    if "{{" not in text:
        return text
    out: list[str] = []
    for part in _compile(text):
        if isinstance(part, str):
            out.append(part)
            continue
        key, expr = part
        if key is None:
            raise TemplateError(f"template {{{{{expr}}}}} is not allowed")
        if key == "":
            out.append(cluster_name)
        elif key in labels:
            out.append(labels[key])
        else:
            raise TemplateError(
                f"cluster {cluster_name!r} has no label {key!r} (used by {{{{{expr}}}}})"
            )
    return "".join(out)


def inputs(text: str) -> tuple[str, ...] | None:
    """What of a cluster `text` reads: label keys, "" for its name (in order, once each);
    None when an expression is not allowed (`render` raises for it)."""
    if "{{" not in text:
        return ()
    out: dict[str, None] = {}
    for part in _compile(text):
        if isinstance(part, str):
            continue
        if part[0] is None:
            return None
        out[part[0]] = None
    return tuple(out)

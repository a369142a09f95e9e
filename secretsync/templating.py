"""`{{ cluster.name }}` and `{{ cluster.labels.<key> }}` in fleet strings — nothing else.

`check` finds syntax errors when the fleet is loaded; `render` fills a string for one cluster
and raises `TemplateError` for a label that cluster does not have (never an empty string).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_EXPR = re.compile(r"\{\{(.*?)\}\}")
_LABELS = "cluster.labels."


class TemplateError(ValueError):
    """A template names something other than cluster.name or an existing cluster label."""


def _parse(expr: str) -> str | None:
    """The label key of `cluster.labels.<key>`, "" for cluster.name, None when invalid."""
    expr = expr.strip()
    if expr == "cluster.name":
        return ""
    if expr.startswith(_LABELS) and len(expr) > len(_LABELS) and " " not in expr:
        return expr[len(_LABELS) :]
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


def render(text: str, *, cluster_name: str, labels: Mapping[str, str]) -> str:
    """Fill every expression for one cluster."""
    if "{{" not in text:
        return text

    def fill(m: re.Match[str]) -> str:
        key = _parse(m.group(1))
        if key is None:
            raise TemplateError(f"template {{{{{m.group(1)}}}}} is not allowed")
        if key == "":
            return cluster_name
        if key not in labels:
            raise TemplateError(
                f"cluster {cluster_name!r} has no label {key!r} (used by {{{{{m.group(1)}}}}})"
            )
        return labels[key]

    return _EXPR.sub(fill, text)

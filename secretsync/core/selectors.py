"""Kubernetes label selectors: matching, the `--selector` string syntax, and label validity.

Pure functions over `model.Selector`. The semantics are the API server's: every requirement
must hold; `In` needs the label present with one of the values, `NotIn` holds when the label
is absent or has none of them, `Exists` / `DoesNotExist` look at presence only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from secretsync.core.model import Cluster, Operator, Overlay, Requirement, Selector

# Checked with `fullmatch`: `$` would also accept a trailing newline.
_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid label key, or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return f"label key {key!r} has an invalid prefix (a DNS subdomain is required)"
    if not name or len(name) > 63 or not _NAME.fullmatch(name):
        return (
            f"label key {key!r} is invalid (1-63 characters: alphanumerics, '-', '_', '.', "
            "starting and ending with an alphanumeric)"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if len(value) > 63 or not _NAME.fullmatch(value):
        return (
            f"label value {value!r} is invalid (at most 63 characters: alphanumerics, '-', '_', "
            "'.', starting and ending with an alphanumeric)"
        )
    return None


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy every requirement of `selector`."""
    for req in selector.requirements:
        present = req.key in labels
        if req.operator is Operator.IN:
            ok = present and labels[req.key] in req.values
        elif req.operator is Operator.NOT_IN:
            ok = not present or labels[req.key] not in req.values
        elif req.operator is Operator.EXISTS:
            ok = present
        else:
            ok = not present
        if not ok:
            return False
    return True


def overlay_reaches(overlay: Overlay, cluster: Cluster) -> bool:
    """Whether an overlay applies to `cluster`: it names it, or its selector matches it."""
    if overlay.clusters is not None:
        return cluster.name in overlay.clusters
    return overlay.selector is not None and matches(overlay.selector, cluster.labels)


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<notexists>!\s*(?P<nkey>[^\s,!=()]+))
      | (?P<key>[^\s,!=()]+)\s*
        (?:
            (?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)
          | (?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
        )?
    )\s*(?:,|$)""",
    re.VERBOSE,
)


def parse(text: str) -> Selector:
    """Parse the kubectl selector syntax: `env=prod,tier in (a,b),!legacy,region`.

    Raises ValueError naming the part that does not parse.
    """
    reqs: list[Requirement] = []
    pos = 0
    text = text.strip()
    if not text:
        return Selector()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse selector at {text[pos:]!r}")
        pos = m.end()
        if m.group("notexists"):
            key = m.group("nkey")
            reqs.append(Requirement(key, Operator.DOES_NOT_EXIST))
        else:
            key = m.group("key")
            if m.group("op"):
                value = m.group("value")
                op = Operator.NOT_IN if m.group("op") == "!=" else Operator.IN
                if problem := label_value_problem(value):
                    raise ValueError(problem)
                reqs.append(Requirement(key, op, (value,)))
            elif m.group("setop"):
                values = tuple(v.strip() for v in m.group("values").split(",") if v.strip())
                if not values:
                    raise ValueError(f"selector {key!r} {m.group('setop')} needs values")
                for value in values:
                    if problem := label_value_problem(value):
                        raise ValueError(problem)
                op = Operator.IN if m.group("setop") == "in" else Operator.NOT_IN
                reqs.append(Requirement(key, op, values))
            else:
                reqs.append(Requirement(key, Operator.EXISTS))
        if problem := label_key_problem(key):
            raise ValueError(problem)
    return Selector(tuple(reqs))

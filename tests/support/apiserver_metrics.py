"""Requests a real kube-apiserver has answered, read from its own `/metrics` counters
(`apiserver_request_total`): what reached the server, whatever the client reports."""

from __future__ import annotations

import json
import re
import ssl
import urllib.request

from tests.support.kubecluster import KubeCluster

WRITES = ("APPLY", "PATCH", "PUT", "POST", "DELETE")
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)


def requests(cluster: KubeCluster, *, resource: str = "secrets") -> dict[str, float]:
    """Requests on `resource` answered since the apiserver started, by verb."""
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    # the apiserver this session started, on 127.0.0.1
    request = urllib.request.Request(  # noqa: S310
        f"{cluster.server}/metrics", headers={"Authorization": f"Bearer {cluster.admin_token}"}
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    out: dict[str, float] = {}
    for match in _SAMPLE.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("resource") == resource and not labels.get("subresource"):
            verb = labels.get("verb", "")
            out[verb] = out.get(verb, 0.0) + float(match["value"])
    return out


def writes(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Write requests between two `requests()` readings, by verb (every verb listed)."""
    return {verb: after.get(verb, 0.0) - before.get(verb, 0.0) for verb in WRITES}


def audited(
    cluster: KubeCluster, *, verb: str, namespace: str, resource: str = "secrets"
) -> list[str]:
    """Names of the objects a request with `verb` reached in `namespace`, from the apiserver's
    audit log (completed requests, one line each, in order)."""
    names: list[str] = []
    if not cluster.audit_log.exists():
        return names
    for line in cluster.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            event.get("stage") == "ResponseComplete"
            and event.get("verb") == verb
            and ref.get("resource") == resource
            and ref.get("namespace") == namespace
            and not ref.get("subresource")
        ):
            names.append(str(ref.get("name", "")))
    return names

"""The cluster registry commands: `cluster add` writes a Cluster into the fleet repo (fetching
its sealing certificate from the sealed-secrets controller through the API server's service
proxy, as kubeseal does), `cluster remove` tears down what secretsync delivered there.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from secretsync import emit, errors, load, seal, selectors
from secretsync.clusters import Endpoint
from secretsync.model import API_VERSION, Delivery


async def fetch_certificate(
    api: Endpoint, *, namespace: str, name: str, timeout_s: float = 15.0
) -> bytes:
    """The controller's current certificate, through the API server's service proxy."""
    status, raw, _ = await api.request(
        "GET", f"/api/v1/namespaces/{namespace}/services/{name}", timeout_s=timeout_s
    )
    if status == 0:
        raise errors.DeliveryError("cannot reach the API server")
    if status == 404:
        raise errors.DeliveryError(
            f"no Service {namespace}/{name}: pass --controller-namespace/--controller-name of "
            "the sealed-secrets controller (its Helm chart names the Service after the release)"
        )
    if status != 200:
        raise errors.DeliveryError(f"reading Service {namespace}/{name}: HTTP {status}")
    try:
        ports = json.loads(raw)["spec"]["ports"]
        port = ports[0].get("name") or str(ports[0]["port"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise errors.DeliveryError(f"Service {namespace}/{name} has no ports") from None
    path = f"/api/v1/namespaces/{namespace}/services/http:{name}:{port}/proxy/v1/cert.pem"
    status, raw, _ = await api.request(
        "GET", path, accept="application/x-pem-file, */*", timeout_s=timeout_s
    )
    if status != 200:
        raise errors.DeliveryError(
            f"fetching the certificate from {namespace}/{name} through the service proxy: "
            f"HTTP {status}"
        )
    return raw


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        os.link(tmp, path)  # fails if the file appeared meanwhile: never overwrite
    finally:
        os.unlink(tmp)


def add_cluster(
    root: Path,
    *,
    name: str,
    labels: Mapping[str, str],
    delivery: Delivery,
    api: Endpoint | None,
    kubeconfig: Mapping[str, object],
    controller_namespace: str,
    controller_name: str,
    allowed_namespaces: Sequence[str],
    now: datetime,
) -> dict[str, object]:
    """Register a cluster: `clusters/<name>.yaml` (+ `certs/<name>.pem` when sealed).

    Refuses a name already in the fleet, and leaves the repo as it was on any error.
    """
    fleet = load.load_fleet(root)
    if not load.is_dns_label(name):
        raise errors.ConfigError("must be a DNS label", field="NAME")
    if name in fleet.clusters:
        raise errors.ConfigError(
            f"cluster {name!r} is already registered ({fleet.clusters[name].origin})", field="NAME"
        )
    for key, value in labels.items():
        if problem := selectors.label_key_problem(key) or selectors.label_value_problem(value):
            raise errors.ConfigError(problem, field="--label")
    cluster_file = root / fleet.layout.clusters / f"{name}.yaml"
    spec: dict[str, object] = {}
    if delivery is not fleet.default_delivery:
        spec["delivery"] = delivery.value
    written: list[Path] = []
    summary: dict[str, object] = {"cluster": name, "file": str(cluster_file.relative_to(root))}
    try:
        if delivery is Delivery.SEALED:
            if api is None:
                raise errors.ConfigError(
                    "a sealed cluster needs --kubeconfig", field="--kubeconfig"
                )
            pem = asyncio.run(
                fetch_certificate(api, namespace=controller_namespace, name=controller_name)
            )
            cert = seal.load_certificate(
                pem, source=f"{controller_namespace}/{controller_name}", now=now
            )
            cert_rel = f"certs/{name}.pem"
            _write_new(root / cert_rel, pem)
            written.append(root / cert_rel)
            pin = seal.certificate_sha256(pem, source=cert_rel)
            spec["sealedSecrets"] = {
                "certFile": cert_rel,
                # pinned: a certificate swapped on disk later is refused, not sealed to
                "certificateSha256": pin,
                "controller": {"namespace": controller_namespace, "name": controller_name},
            }
            summary.update(
                certFile=cert_rel,
                certificateSha256=pin,
                fingerprint=cert.fingerprint,
                notAfter=cert.not_after.isoformat(),
            )
        if kubeconfig:
            spec["kubeconfig"] = dict(kubeconfig)
        if allowed_namespaces:
            spec["allowedNamespaces"] = list(allowed_namespaces)
        doc = {
            "apiVersion": API_VERSION,
            "kind": "Cluster",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": spec,
        }
        _write_new(cluster_file, emit.dump(doc))
        written.append(cluster_file)
        load.load_fleet(root)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return summary

"""The cluster registry commands: `cluster add` writes a Cluster into the fleet repo (fetching
its sealing certificate from the sealed-secrets controller through the API server's service
proxy, as kubeseal does), `cluster refresh-cert` takes the controller's renewed certificate
(and updates the pin), `cluster remove` tears down what secretsync delivered there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from secretsync.core import errors, selectors
from secretsync.core.model import API_VERSION, Cluster, ControllerRef
from secretsync.delivery import emit, seal, sealed
from secretsync.delivery import kinds as delivery_kinds
from secretsync.fleet import load
from secretsync.kube.clusters import Endpoint


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
    delivery: str,
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
    if delivery != fleet.default_delivery:
        spec["delivery"] = delivery
    written: list[Path] = []
    summary: dict[str, object] = {"cluster": name, "file": str(cluster_file.relative_to(root))}
    try:
        if delivery_kinds.get(delivery).seals:
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


def _replace(path: Path, data: bytes) -> None:
    """Write `data` over `path` atomically (temp file beside it, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _pin_pattern(pin: str) -> re.Pattern[str]:
    """The pin as a Cluster file may spell it: 64 hex digits, or 32 pairs with colons."""
    pairs = [pin[i : i + 2] for i in range(0, len(pin), 2)]
    return re.compile("(?i)" + "|".join(["".join(pairs), ":".join(pairs)]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Refreshed:
    """What `refresh_certificate` found and did (SHA-256s of certificates are public)."""

    cluster: str
    cert_file: str
    old_sha256: str | None
    new_sha256: str
    key_fingerprint: str
    not_after: datetime
    pin_updated: bool = False

    @property
    def changed(self) -> bool:
        return self.new_sha256 != self.old_sha256

    def document(self) -> dict[str, object]:
        # certificateSha256 is what `openssl x509 -noout -fingerprint -sha256` prints
        doc: dict[str, object] = {
            "cluster": self.cluster,
            "certFile": self.cert_file,
            "old": {"certificateSha256": self.old_sha256},
            "new": {
                "certificateSha256": self.new_sha256,
                "keyFingerprint": self.key_fingerprint,
                "notAfter": self.not_after.isoformat(),
            },
            "changed": self.changed,
        }
        if self.changed:
            doc["pinUpdated"] = self.pin_updated
        return doc


async def refresh_certificate(
    root: Path,
    *,
    cluster: Cluster,
    api: Endpoint,
    controller: ControllerRef,
    now: datetime,
) -> Refreshed:
    """Fetch the controller's current certificate; when it is another one, write it to the
    cluster's `certFile` and update the `certificateSha256` pin in its Cluster file, in the
    pin's own spelling. Both files change or neither does (the fleet must load after)."""
    settings = sealed.settings(cluster)
    cert_file, pinned = settings.cert_file, settings.cert_sha256
    if cert_file is None:
        raise errors.ConfigError(
            f"cluster {cluster.name!r} has no sealedSecrets.certFile", field="NAME"
        )
    pem = await fetch_certificate(api, namespace=controller.namespace, name=controller.name)
    source = f"{controller.namespace}/{controller.name}"
    new = seal.load_certificate(pem, source=source, now=now)
    new_pin = seal.certificate_sha256(pem, source=source)
    cert_path = root / cert_file
    old_pem = cert_path.read_bytes() if cert_path.is_file() else None
    old_pin = None
    if old_pem is not None:
        with contextlib.suppress(errors.SealError):  # not a certificate: replaced all the same
            old_pin = seal.certificate_sha256(old_pem, source=cert_file)
    found = Refreshed(
        cluster=cluster.name,
        cert_file=cert_file,
        old_sha256=old_pin,
        new_sha256=new_pin,
        key_fingerprint=new.fingerprint,
        not_after=new.not_after,
    )
    if not found.changed:
        return found
    cluster_path = root / cluster.origin.file
    cluster_text = cluster_path.read_text(encoding="utf-8") if pinned else None
    new_text = None
    if cluster_text is not None and pinned is not None:
        spellings = _pin_pattern(pinned).findall(cluster_text)
        if len(spellings) != 1:
            raise errors.ConfigError(
                "the certificateSha256 pin is not written once as 64 hex digits (or with "
                "colons): update certFile and the pin by hand",
                file=cluster.origin.file,
                line=cluster.origin.line,
                field="sealedSecrets.certificateSha256",
            )
        spelled = spellings[0]
        if ":" in spelled:
            pin_text = ":".join(new_pin[i : i + 2] for i in range(0, 64, 2))
            pin_text = pin_text.upper() if spelled.isupper() else pin_text
        else:
            pin_text = new_pin.upper() if spelled.isupper() else new_pin
        new_text = cluster_text.replace(spelled, pin_text)
    try:
        cert_path.parent.mkdir(parents=True, exist_ok=True)  # a first fetch into certs/
        _replace(cert_path, pem)
        if new_text is not None:
            _replace(cluster_path, new_text.encode("utf-8"))
        load.load_fleet(root)
    except BaseException:
        if old_pem is not None:
            _replace(cert_path, old_pem)
        else:
            cert_path.unlink(missing_ok=True)
        if cluster_text is not None:
            _replace(cluster_path, cluster_text.encode("utf-8"))
        raise
    return dataclasses.replace(found, pin_updated=new_text is not None)

"""The `seal` command's work: seal given values for many clusters, each with its own cert.

Output objects carry `secretsync.dev/cluster` but not the managed-by label: they are the
user's files and are never pruned. `merge_into` adds keys to an existing file of such objects,
keeping each document's name and namespace, the way kubeseal's --merge-into does.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from secretsync.core import errors, selectors
from secretsync.core.model import ANNOTATION_CLUSTER, Fleet, Scope, Selector
from secretsync.core.values import SecretValue
from secretsync.delivery import seal, sealed
from secretsync.delivery.rendered import Manifest, dump_yaml
from secretsync.delivery.sealed import SEALED_SECRET
from secretsync.fleet.certificates import FleetCertificates

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SealResult:
    manifests: list[Manifest] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def _manifest(
    *,
    cluster: str,
    namespace: str,
    name: str,
    scope: Scope,
    secret_type: str,
    encrypted: Mapping[str, str],
) -> Manifest:
    annotations = dict(
        sorted({ANNOTATION_CLUSTER: cluster, **seal.scope_annotations(scope)}.items())
    )
    meta = {"name": name, "namespace": namespace, "annotations": annotations}
    return {
        "apiVersion": SEALED_SECRET.api_version,
        "kind": SEALED_SECRET.kind,
        "metadata": meta,
        "spec": {
            "encryptedData": dict(sorted(encrypted.items())),
            "template": {
                "metadata": {**meta, "annotations": dict(annotations)},
                "type": secret_type,
            },
        },
    }


def seal_for_clusters(
    fleet: Fleet,
    *,
    names: Collection[str],
    selector: Selector | None,
    namespace: str,
    name: str,
    values: Mapping[str, SecretValue],
    scope: Scope,
    secret_type: str,
    now: datetime,
) -> SealResult:
    """One SealedSecret per selected cluster. Unknown names or an empty match: ConfigError."""
    unknown = [n for n in names if n not in fleet.clusters]
    if unknown:
        raise errors.ConfigError(f"unknown cluster(s): {', '.join(unknown)}", field="--cluster")
    chosen = [
        c
        for c in fleet.clusters.values()
        if (c.name in names) or (selector is not None and selectors.matches(selector, c.labels))
    ]
    if not chosen:
        raise errors.ConfigError("no cluster matches", field="--selector")
    result = SealResult()
    certificates = FleetCertificates(fleet)
    for cluster in chosen:
        if cluster.allowed_namespaces is not None and namespace not in cluster.allowed_namespaces:
            result.failures[cluster.name] = f"namespace {namespace!r} is not allowed here"
            continue
        if scope is Scope.CLUSTER_WIDE and not fleet.policies.allow_cluster_wide:
            result.failures[cluster.name] = "cluster-wide scope is not allowed by the Fleet"
            continue
        settings = sealed.settings(cluster)
        if settings.cert_file is None:
            result.failures[cluster.name] = "no sealedSecrets.certFile in the registry"
            continue
        try:
            cert = certificates.certificate(cluster, now=now)
        except (errors.ConfigError, errors.SealError) as exc:
            result.failures[cluster.name] = str(exc)
            continue
        log.info(
            "cluster %s: sealing with %s (certificate SHA-256 %s%s)",
            cluster.name,
            settings.cert_file,
            cert.sha256,
            ", pinned" if settings.cert_sha256 else "",
        )
        label = seal.label_for(namespace, name, scope)
        encrypted = {
            key: seal.seal_value(cert.public_key, value.reveal(), label=label)
            for key, value in values.items()
        }
        result.manifests.append(
            _manifest(
                cluster=cluster.name,
                namespace=namespace,
                name=name,
                scope=scope,
                secret_type=secret_type,
                encrypted=encrypted,
            )
        )
    return result


def merge_into(path: Path, manifests: list[Manifest], *, scope: Scope) -> None:
    """Merge sealed keys into the documents of `path` (matched by cluster annotation).

    A document for a cluster not in the file is appended. The file keeps its documents' names
    and namespaces; sealing used the given ones, so they must agree for strict scope.
    """
    try:
        existing = [
            d for d in yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader) if d is not None
        ]
    except FileNotFoundError:
        existing = []
    except (OSError, yaml.YAMLError) as exc:
        raise errors.ConfigError(f"cannot read ({type(exc).__name__})", file=str(path)) from None
    by_cluster: dict[str, dict[str, Any]] = {}
    for i, doc in enumerate(existing):
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        if (
            not isinstance(doc, dict)
            or doc.get("kind") != SEALED_SECRET.kind
            or not isinstance(meta, dict)
        ):
            raise errors.ConfigError(f"document {i + 1} is not a SealedSecret", file=str(path))
        cluster = (meta.get("annotations") or {}).get(ANNOTATION_CLUSTER)
        if isinstance(cluster, str):
            by_cluster[cluster] = doc
    for manifest in manifests:
        cluster = manifest["metadata"]["annotations"][ANNOTATION_CLUSTER]
        target = by_cluster.get(cluster)
        if target is None:
            existing.append(manifest)
            continue
        meta = target["metadata"]
        new_meta = manifest["metadata"]
        if scope is not Scope.CLUSTER_WIDE and (
            meta.get("namespace") != new_meta["namespace"]
            or (scope is Scope.STRICT and meta.get("name") != new_meta["name"])
        ):
            raise errors.ConfigError(
                f"the document for cluster {cluster!r} is {meta.get('namespace')}/"
                f"{meta.get('name')}, not {new_meta['namespace']}/{new_meta['name']}",
                file=str(path),
            )
        spec = target.setdefault("spec", {})
        spec.setdefault("encryptedData", {}).update(manifest["spec"]["encryptedData"])
    data = b"".join(b"---\n" + dump_yaml(doc) for doc in existing)
    try:
        mode = path.stat().st_mode & 0o7777  # the file keeps its mode
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        mode = 0o666 & ~mask  # a new file gets the mode `open` would give it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:  # the temporary file stays 0600 until it holds everything, then takes the mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

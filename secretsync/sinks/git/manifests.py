"""The files of the Git output read back: a manifest parsed into what secretsync owns of it
(`Observed`), the plaintext guard before a write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from secretsync.core import errors
from secretsync.core.model import (
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_KEY_HASHES,
    ANNOTATION_SOURCE_VERSIONS,
    LABEL_FLEET_SECRET,
    ObjectKey,
    Observed,
    is_owned,
)
from secretsync.delivery import emit
from secretsync.delivery.rendered import Rendered, holds_plaintext, parse_key_hashes

KUSTOMIZATION = "kustomization.yaml"


MAX_MANIFEST_BYTES = 4 * 1024 * 1024


_HEADER = "# Written by secretsync for cluster {cluster}. Do not edit: changes are overwritten.\n"


def guard(data: bytes, item: Rendered, *, path: str) -> None:
    """Refuse bytes that hold a value `item` was built from (`materialize.holds_plaintext`);
    the error names the file, never the value."""
    if holds_plaintext(data, item):
        raise errors.PlaintextRefused(
            f"{path}: refused to write a resolved secret value in plaintext"
        )


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        doc = yaml.load(data, Loader=yaml.CSafeLoader)
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else None


def _observe_file(cluster: str, data: bytes, *, detail: bool) -> Observed | None:
    doc = None if detail else emit.read_metadata(data)
    if doc is None:
        doc = _parse(data)
    if doc is None:
        return None
    return _observed(cluster, doc, detail=detail)


def _observed(cluster: str, doc: Mapping[str, Any], *, detail: bool) -> Observed | None:
    """What the sink needs to know of a parsed manifest (or of one it is about to write)."""
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    labels = meta.get("labels")
    annotations = meta.get("annotations")
    if not isinstance(labels, dict):
        labels = {}
    if not isinstance(annotations, dict):
        annotations = {}
    owned = is_owned(labels, annotations, cluster)
    key_hashes: dict[str, str] = {}
    raw_hashes = annotations.get(ANNOTATION_KEY_HASHES)
    if isinstance(raw_hashes, str):
        key_hashes = parse_key_hashes(raw_hashes)
    encrypted: dict[str, str] = {}
    if detail:
        spec = doc.get("spec")
        enc = spec.get("encryptedData") if isinstance(spec, dict) else None
        if isinstance(enc, dict):
            encrypted = {str(k): str(v) for k, v in enc.items() if isinstance(v, str)}
    content = annotations.get(ANNOTATION_CONTENT_HASH)
    fleet_secret = labels.get(LABEL_FLEET_SECRET)
    raw_versions = annotations.get(ANNOTATION_SOURCE_VERSIONS)
    versions = parse_key_hashes(raw_versions) if isinstance(raw_versions, str) else {}
    return Observed(
        key=ObjectKey(cluster, namespace, name),
        kind=str(doc.get("kind", "")),
        owned=owned,
        fleet_secret=fleet_secret if isinstance(fleet_secret, str) else None,
        content_hash=content if isinstance(content, str) else None,
        key_hashes=key_hashes,
        encrypted=encrypted,
        versions=versions,
    )

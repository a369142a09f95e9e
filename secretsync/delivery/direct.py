"""The `direct` delivery: a plain Secret for the Kubernetes API, never for Git."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from typing import Any, Final

from secretsync.core import errors
from secretsync.core.model import (
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_MANAGED_KEYS,
    Cluster,
    DesiredSecret,
    Fleet,
    FleetSecret,
    Planned,
)
from secretsync.core.values import KeyHasher, SecretValue, content_hash
from secretsync.delivery import kinds
from secretsync.delivery.rendered import (
    FORMAT,
    Manifest,
    RenderContext,
    Rendered,
    _metadata,
    _needles,
    _shape,
    _version_annotation,
    _versioned,
)

SECRET: Final = kinds.ApiKind("Secret", "", "v1", "secrets")

NAME: Final = "direct"


@functools.lru_cache(maxsize=8)
def direct_hasher(hmac_key: bytes) -> KeyHasher:
    """Keyed hashes of direct Secret values (also applied to observed data by the kube sink).
    One per key: a hasher is immutable, and building one costs a JSON dump and an HMAC."""
    return KeyHasher(hmac_key, {"delivery": "direct"})


def _direct_hashes(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> tuple[str, dict[str, str]]:
    """(content hash, per-key hashes) of a direct Secret, without building it."""
    hasher = direct_hasher(ctx.hmac_key)
    key_hashes = {key: hasher.hash(key, value) for key, value in sorted(values.items())}
    digest = content_hash(
        ctx.hmac_key,
        _versioned(
            {"format": FORMAT, "kind": "Secret", **_shape(desired), "keys": key_hashes},
            ctx.versions,
        ),
    )
    return digest, key_hashes


def render_direct(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> Rendered:
    digest, key_hashes = _direct_hashes(desired, values, ctx=ctx)
    manifest: Manifest = {
        "apiVersion": SECRET.api_version,
        "kind": SECRET.kind,
        "metadata": _metadata(
            desired, {ANNOTATION_CONTENT_HASH: digest, **_version_annotation(ctx.versions)}
        ),
        "type": desired.target.type,
        "data": {
            key: base64.b64encode(value.reveal()).decode("ascii")
            for key, value in sorted(values.items())
        },
    }
    if desired.target.immutable:
        manifest["immutable"] = True
    return Rendered(
        key=desired.key,
        fleet_secret=desired.fleet_secret,
        delivery=NAME,
        kind=SECRET.kind,
        content_hash=digest,
        key_hashes=key_hashes,
        manifest=manifest,
        needles=_needles(values, desired),
    )


class DirectKind:
    name = NAME
    api_kind = SECRET
    in_git = False
    holds_values = True
    reads_values = True
    controller_writes_secret = False
    seals = False
    field = None

    def read_settings(
        self, spec: kinds.Map, *, cluster: str, files: kinds.FleetFiles, chosen: bool
    ) -> None:
        return None

    def check_secret(
        self, *, secret: FleetSecret, cluster: Cluster, data: Mapping[str, Planned], fleet: Fleet
    ) -> list[errors.ConfigError]:
        return []

    def render(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> Rendered:
        return render_direct(desired, values, ctx=ctx)

    def content_hash(
        self, desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
    ) -> str:
        return _direct_hashes(desired, values, ctx=ctx)[0]

    def drift(self, obj: Mapping[str, Any]) -> dict[str, object]:
        """Only the keys secretsync applied count (named in its managed-keys annotation):
        another field manager may add keys of its own, and server-side apply keeps them; that
        is not drift."""
        data = obj.get("data") or {}
        keys = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_MANAGED_KEYS)
        if isinstance(keys, str):
            data = {k: data.get(k) for k in keys.split(",") if k}
        return {"data": data, "type": obj.get("type") or "Opaque"}


kinds.register(DirectKind())

"""The `direct` delivery: a plain Secret for the Kubernetes API, never for Git."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping

from secretsync.core.model import ANNOTATION_CONTENT_HASH, Delivery, DesiredSecret
from secretsync.core.values import KeyHasher, SecretValue, content_hash
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
        "apiVersion": "v1",
        "kind": "Secret",
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
        delivery=Delivery.DIRECT,
        kind="Secret",
        content_hash=digest,
        key_hashes=key_hashes,
        manifest=manifest,
        needles=_needles(values, desired),
    )

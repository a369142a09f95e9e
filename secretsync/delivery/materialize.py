"""DesiredSecret + resolved values → the object a cluster receives, with its keyed content hash.

Pure: one render function per delivery, picked from `RENDERERS`.

- `sealed`: a SealedSecret. Each key's ciphertext is kept from the previous object when that
  key's hash is unchanged (the hash binds the value, the key name, the certificate and the
  scope label), so unchanged values never churn Git.
- `external`: an ExternalSecret that names Vault paths and keys; it carries no values.
- `direct`: a plain Secret for the Kubernetes API, never for Git.

Every object carries the managed-by label, the fleet-secret label, the cluster annotation and
the content hash annotation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from secretsync.core.model import Delivery, DesiredSecret
from secretsync.core.values import SecretValue, keyed_digest
from secretsync.delivery.direct import _direct_hashes, render_direct
from secretsync.delivery.external import (
    _external_generic,
    _external_json,
    _external_spec,
    render_external,
)
from secretsync.delivery.rendered import Render, RenderContext, Rendered, check_size
from secretsync.delivery.sealed import render_sealed, sealed_hashes


def content_hash_of(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> str:
    """The content hash `render` would give, without sealing anything."""
    check_size(desired, values)
    if desired.delivery is Delivery.SEALED:
        return sealed_hashes(desired, values, ctx=ctx).digest
    if desired.delivery is Delivery.EXTERNAL:
        try:
            return keyed_digest(ctx.hmac_key, _external_json(desired))
        except TypeError:
            return _external_generic(desired, _external_spec(desired)[0], ctx.hmac_key)
    return _direct_hashes(desired, values, ctx=ctx)[0]


RENDERERS: Mapping[Delivery, Render] = {
    Delivery.SEALED: render_sealed,
    Delivery.EXTERNAL: render_external,
    Delivery.DIRECT: render_direct,
}


def render(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> Rendered:
    check_size(desired, values)
    rendered = RENDERERS[desired.delivery](desired, values, ctx=ctx)
    if desired.restarts or desired.adopt:
        rendered = dataclasses.replace(rendered, restarts=desired.restarts, adopt=desired.adopt)
    return rendered

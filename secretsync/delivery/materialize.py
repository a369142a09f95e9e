"""DesiredSecret + resolved values → the object a cluster receives, with its keyed content hash.

Pure: the render of the cluster's delivery kind (`delivery.kinds`: `sealed`, `external`,
`direct`, and any other registered), after the size check every object gets, with what every
object carries (restarts, adoption) added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from secretsync.core.model import DesiredSecret
from secretsync.core.values import SecretValue
from secretsync.delivery import kinds
from secretsync.delivery.rendered import RenderContext, Rendered, check_size


def content_hash_of(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> str:
    """The content hash `render` would give, without rendering (or sealing) anything."""
    check_size(desired, values)
    return kinds.get(desired.delivery).content_hash(desired, values, ctx=ctx)


def render(
    desired: DesiredSecret, values: Mapping[str, SecretValue], *, ctx: RenderContext
) -> Rendered:
    check_size(desired, values)
    rendered = kinds.get(desired.delivery).render(desired, values, ctx=ctx)
    if desired.restarts or desired.adopt:
        rendered = dataclasses.replace(rendered, restarts=desired.restarts, adopt=desired.adopt)
    return rendered

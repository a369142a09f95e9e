"""One cluster's objects in batches, and its sealed objects rendered in order (on the seal workers
when there are enough seals)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from secretsync.core import errors
from secretsync.core.model import Cluster, DesiredSecret, ObjectKey, Observed
from secretsync.core.values import SecretValue
from secretsync.delivery import materialize, seal
from secretsync.delivery.rendered import RenderContext, Rendered
from secretsync.delivery.sealed import to_seal
from secretsync.delivery.sealpool import SealPool
from secretsync.sinks.deliver import Sink


def _batches(wanted: Sequence[DesiredSecret], size: int | None) -> list[Sequence[DesiredSecret]]:
    """`wanted` in batches of `size` (None: one batch, also when empty, so that deletes and a
    staging sink's apply still run), grouped by namespace so that a batch touches few."""
    if size is None or len(wanted) <= size:
        return [wanted]
    ordered = sorted(wanted, key=lambda d: d.target.namespace)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def _render_sealed(
    pending: Sequence[tuple[DesiredSecret, dict[str, SecretValue], RenderContext]],
    certificate: seal.Certificate | None,
    seals: SealPool | None,
) -> Iterator[tuple[DesiredSecret, Rendered | errors.SecretSyncError]]:
    """Render the sealed objects of one cluster, in order. With enough seals to do, the pool's
    workers seal (chunk by chunk) while each object is assembled here as its values arrive."""
    jobs = [to_seal(d, values, ctx=ctx) for d, values, ctx in pending]
    if seals is None or certificate is None or not seals.worth(sum(len(j) for j in jobs)):
        for d, values, ctx in pending:
            yield d, _render(d, values, ctx)
        return
    flat = [
        (ctx.hashes.label if ctx.hashes else b"", plaintext)
        for (_, _, ctx), todo in zip(pending, jobs, strict=True)
        for _, plaintext in todo
    ]
    stream = itertools.chain.from_iterable(seals.seal(certificate.public_key, flat))
    for (d, values, ctx), todo in zip(pending, jobs, strict=True):
        sealed = {key: next(stream) for key, _ in todo}
        done = dataclasses.replace(ctx, sealed=sealed)
        yield d, _render(d, values, done)


def _render(
    d: DesiredSecret, values: Mapping[str, SecretValue], ctx: RenderContext
) -> Rendered | errors.SecretSyncError:
    try:
        return materialize.render(d, values, ctx=ctx)
    except errors.SecretSyncError as exc:
        return exc


@dataclass(slots=True, kw_only=True)
class _Batch:
    """What one batch of one cluster's objects builds up for one sink."""

    sink: Sink
    cluster: Cluster
    observed: Mapping[ObjectKey, Observed]
    certificate: seal.Certificate | None
    cert_error: str | None
    check_refs: bool = False
    """The refs of `external` objects were read for this cycle: their failures count."""
    prepared: dict[ObjectKey, Rendered | str] = field(default_factory=dict)
    keep: set[ObjectKey] = field(default_factory=set)
    meta: dict[ObjectKey, DesiredSecret] = field(default_factory=dict)
    pending: list[tuple[DesiredSecret, dict[str, SecretValue], RenderContext]] = field(
        default_factory=list
    )

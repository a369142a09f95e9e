"""The Fleet's delete limit applied to one cluster's deletes: whether they may go, and a `held`
result per delete kept back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from secretsync.core.model import DeleteLimit, ObjectKey, Observed
from secretsync.engine.report import ItemResult


def _over_limit(
    deletes: Sequence[Observed], observed: Mapping[ObjectKey, Observed], limit: DeleteLimit | None
) -> str:
    """Why `deletes` on one cluster are over `limit` (None: no limit), or "" when they may go."""
    owned = sum(1 for o in observed.values() if o.owned)
    if limit is None or limit.allows(len(deletes), owned=owned):
        return ""
    return (
        f"{len(deletes)} deletes of {owned} owned objects are over the delete limit "
        f"({limit}); run with --allow-deletes to make them"
    )


def _held(
    cluster: str, sink: str, deletes: Sequence[Observed], held: str, *, why: str
) -> list[ItemResult]:
    """One `held` result per delete kept back: the object stays where it is."""
    reason = f"delete held: {why}; {held}" if why else f"delete held: {held}"
    return [
        ItemResult(
            cluster=cluster,
            namespace=gone.key.namespace,
            name=gone.key.name,
            fleet_secret=gone.fleet_secret,
            sink=sink,
            action="held",
            reason=reason,
        )
        for gone in deletes
    ]

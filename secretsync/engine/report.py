"""What one cycle did: a result per object per cluster (never a value), the cycle's counts and what
it read."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from secretsync.core.model import DesiredSecret, Location, ObjectKey, ValueRef
from secretsync.core.values import SecretValue
from secretsync.delivery.rendered import Manifest
from secretsync.sinks.deliver import KeyDiff

NO_KEY_CHANGES = KeyDiff()
"""Shared by the (many) results without key changes: KeyDiff is immutable."""


NO_VERSIONS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True, kw_only=True)
class ItemResult:
    """The outcome for one object on one cluster. Never holds a value."""

    cluster: str
    namespace: str
    name: str
    fleet_secret: str | None
    sink: str
    action: str  # create | update | delete | held | unchanged | failed
    reason: str = ""
    keys: KeyDiff = NO_KEY_CHANGES
    content_hash: str | None = None
    desired: DesiredSecret | None = None
    versions: tuple[str, ...] = ()  # `<location> (version V)` read for a create or update
    version_changes: tuple[str, ...] = ()  # `<mount>/<path>: 3 -> 4` against what is delivered
    source_versions: Mapping[str, str] = field(default_factory=dict)  # what the object holds

    @property
    def refs(self) -> tuple[str, ...]:
        """The value refs this object was built from (never values)."""
        return tuple(str(r) for r in self.desired.refs()) if self.desired else ()


@dataclass(slots=True, kw_only=True, repr=False)
class CycleReport:
    """What one cycle did. Its repr is a summary: asyncio formats the finished task's result
    when restoring signal handlers, and a full repr of 100,000 items costs a second."""

    items: list[ItemResult] = field(default_factory=list)
    reads: int = 0
    seals: int = 0
    writes: int = 0
    deletes: int = 0
    failed_clusters: dict[str, str] = field(default_factory=dict)
    read_ok: frozenset[Location] = frozenset()
    """Source locations read in this cycle."""
    read_failed: frozenset[Location] = frozenset()
    """Source locations whose read failed in this cycle: their objects keep what they hold."""
    guarded: Mapping[ValueRef, SecretValue] = field(default_factory=dict, repr=False)
    standins: dict[ObjectKey, Callable[[], Manifest]] = field(default_factory=dict, repr=False)
    """Per object written: the same object rendered with stand-in values, the baseline that
    tells a value from text the object holds anyway (`materialize.leaks`)."""
    """The values resolved in this cycle: a commit of the output re-checks its blobs for them."""
    pruned: bool = False
    """Whether this cycle looked for objects to delete (a full cycle) and so `held` is whole."""

    @property
    def failures(self) -> list[ItemResult]:
        return [i for i in self.items if i.action == "failed"]

    @property
    def held(self) -> list[ItemResult]:
        """Deletes kept back by the Fleet's delete limit."""
        return [i for i in self.items if i.action == "held"]

    def held_by_cluster(self) -> dict[str, list[ItemResult]]:
        """The held deletes of each cluster that has some, by cluster name (sorted)."""
        out: dict[str, list[ItemResult]] = {}
        for item in self.held:
            out.setdefault(item.cluster, []).append(item)
        return dict(sorted(out.items()))

    @property
    def ok(self) -> bool:
        return not self.failures and not self.failed_clusters and not self.held

    def __repr__(self) -> str:
        return (
            f"<CycleReport {len(self.items)} items, {len(self.failures)} failed, "
            f"{len(self.failed_clusters)} clusters failed>"
        )


def _item(d: DesiredSecret, sink: str, action: str, **kwargs: object) -> ItemResult:
    return ItemResult(
        cluster=d.cluster.name,
        namespace=d.target.namespace,
        name=d.target.name,
        fleet_secret=d.fleet_secret,
        sink=sink,
        action=action,
        desired=d,
        **kwargs,  # type: ignore[arg-type]
    )

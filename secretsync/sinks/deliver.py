"""Diff desired objects against what a sink holds, the Sink contract, and `DelegatingSink`,
the base of a sink that wraps another and changes only some of what it does.

`diff` is pure: equal content hash → nothing to do; a desired object with no owned counterpart
→ create; a differing hash → update; an owned object that is neither desired nor kept → delete.
Objects whose values could not be resolved are *kept*: never updated, never pruned, so a source
outage leaves clusters with what they had. Objects the sink found but does not own are never
touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from secretsync.core.model import Cluster, ObjectKey, Observed
from secretsync.delivery.rendered import Rendered


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyDiff:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


def key_diff(old: Mapping[str, str], new: Mapping[str, str]) -> KeyDiff:
    """Which Secret keys were added, changed or removed, from per-key hashes alone."""
    return KeyDiff(
        added=tuple(sorted(new.keys() - old.keys())),
        changed=tuple(sorted(k for k in new.keys() & old.keys() if new[k] != old[k])),
        removed=tuple(sorted(old.keys() - new.keys())),
    )


@dataclass(slots=True, kw_only=True)
class ChangeSet:
    create: list[Rendered] = field(default_factory=list)
    update: list[Rendered] = field(default_factory=list)
    delete: list[Observed] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete)


@dataclass(slots=True, kw_only=True)
class ApplyResult:
    """What a sink did: objects written and deleted, and per-object failures."""

    written: list[ObjectKey] = field(default_factory=list)
    deleted: list[ObjectKey] = field(default_factory=list)
    failed: dict[ObjectKey, str] = field(default_factory=dict)


class Sink(Protocol):
    """Where objects go. Observes only what it may own; applies only the given changes.

    The engine works on one cluster at a time per sink: `observe`, then one or more batches of
    `apply` (with `stage` ahead of it when the sink `stages`), then `finish_cluster`, and
    `discard` at the end whatever happened. A sink that wraps another (the Lease gate) passes
    every one of these through, so the engine treats it exactly as the sink it wraps."""

    name: ClassVar[str]

    @property
    def shared(self) -> bool:
        """Whether the sink writes one target for the whole fleet (the Git sink's output tree:
        one writer at a time, whatever the cluster) rather than one per cluster (an API)."""
        ...

    def progress(self, cluster: Cluster, mark: Callable[[], None] | None) -> None:
        """Call `mark` each time `cluster` answers, until called with None. The engine counts
        a cluster's timeout from its last answer, so a large cluster that keeps a slow client
        busy is not mistaken for a hung one. A sink whose targets answer at once (files)
        ignores it."""
        ...

    @property
    def stages(self) -> bool:
        """Whether the sink writes each object ahead of `apply`, as soon as it is rendered
        (`stage`: the Git sink's temp file), so that slow writes overlap with sealing. Such a
        sink gets all of a cluster's objects in one batch (one sync, one rename pass); one that
        does not stage (the Kubernetes API) gets them in batches of the engine's
        `batch_size`, which bounds the rendered objects held in memory."""
        ...

    def accepts(self, cluster: Cluster) -> bool:
        """Whether this sink delivers anything for `cluster`."""
        ...

    def observes(self, cluster: Cluster) -> bool:
        """Whether to look at `cluster` at all (a sink that can hold leftovers of a cluster it
        no longer serves observes it to prune them)."""
        ...

    async def observe(self, cluster: Cluster) -> Mapping[ObjectKey, Observed]: ...

    async def detail(self, observed: Observed) -> Observed:
        """The observed object with what a renderer needs to reuse (sealed ciphertext)."""
        ...

    def stage(self, cluster: Cluster, item: Rendered) -> None:
        """Write `item` ahead of `apply` (called only when `stages`). `apply` takes what was
        staged for the very objects it is given; `discard` drops whatever it did not take."""
        ...

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult: ...

    async def finish_cluster(self, cluster: Cluster) -> None:
        """After the last batch of `cluster` (never in a dry run): what covers the whole
        cluster rather than one object. The Git sink writes the folder's kustomization.yaml,
        then unlinks the files it no longer lists (that order keeps a killed run from leaving a
        kustomization that names a missing file); the Kubernetes sink makes the cycle's
        workload restarts, once per workload."""
        ...

    def discard(self, cluster: Cluster) -> None:
        """The engine is done with `cluster` (also after a failure, a timeout or a dry run):
        drop what was staged and not applied, and what was kept for it between batches."""
        ...

    async def orphans(self, known: Set[str]) -> list[str]:
        """Clusters this sink holds owned objects for that are not in `known`."""
        ...


class DelegatingSink:
    """A `Sink` that hands every member of the contract to `inner`; a wrapper subclasses it and
    overrides only what it changes, so an ability added to `Sink` later is passed through by
    every wrapper, not dropped by the one that forgot it. Reports keep the wrapped sink's
    name."""

    name: ClassVar[str] = "delegating"

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # the instance's name is the real sink's

    @property
    def shared(self) -> bool:
        return self.inner.shared

    def progress(self, cluster: Cluster, mark: Callable[[], None] | None) -> None:
        self.inner.progress(cluster, mark)

    @property
    def stages(self) -> bool:
        return self.inner.stages

    def accepts(self, cluster: Cluster) -> bool:
        return self.inner.accepts(cluster)

    def observes(self, cluster: Cluster) -> bool:
        return self.inner.observes(cluster)

    async def observe(self, cluster: Cluster) -> Mapping[ObjectKey, Observed]:
        return await self.inner.observe(cluster)

    async def detail(self, observed: Observed) -> Observed:
        return await self.inner.detail(observed)

    def stage(self, cluster: Cluster, item: Rendered) -> None:
        self.inner.stage(cluster, item)

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult:
        return await self.inner.apply(cluster, changes)

    async def finish_cluster(self, cluster: Cluster) -> None:
        await self.inner.finish_cluster(cluster)

    def discard(self, cluster: Cluster) -> None:
        self.inner.discard(cluster)

    async def orphans(self, known: Set[str]) -> list[str]:
        return await self.inner.orphans(known)


@dataclass(slots=True, kw_only=True)
class Diff:
    changes: ChangeSet
    unchanged: list[ObjectKey]
    conflicts: list[ObjectKey]


def diff(
    desired: Mapping[ObjectKey, Rendered | str],
    observed: Mapping[ObjectKey, Observed],
    *,
    keep: Set[ObjectKey],
) -> Diff:
    """The changes that bring `observed` to `desired`.

    A desired value may be a bare content hash: the caller found it equal to what is observed
    and did not render it. An object at a desired key that secretsync does not own is a
    conflict, never overwritten.
    """
    result = Diff(changes=ChangeSet(), unchanged=[], conflicts=[])
    for key, item in desired.items():
        seen = observed.get(key)
        if seen is not None and not seen.owned:
            result.conflicts.append(key)
        elif isinstance(item, str) or (
            seen is not None and not seen.drifted and seen.content_hash == item.content_hash
        ):
            result.unchanged.append(key)
        elif seen is None:
            result.changes.create.append(item)
        else:
            result.changes.update.append(item)
    for key, seen in observed.items():
        if seen.owned and key not in desired and key not in keep:
            result.changes.delete.append(seen)
    return result

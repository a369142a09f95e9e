"""Several `serve` replicas: clusters sharded by a stable hash, each shard and the
Git writeback guarded by a Lease of the home cluster (see `leases`).

- `shard_of(name, shards)`: sha256 of the cluster name, so every replica, Python version and
  process agrees (never Python's salted `hash()`).
- A replica with shard index I reconciles the clusters of shard I, and only while it holds the
  Lease `secretsync-shard-<I>`; the Git sink writes only on the holder of `secretsync-git`.
- `Coordinator.scope()` is what a cycle may touch; `Coordinator.gate()` wraps a sink so a write
  is refused (the cluster fails, nothing is written) when leadership was lost mid-cycle.
- The shard count is fenced: a shard Lease records its holder's count (annotation
  `secretsync.dev/shards`), and a replica does not take its shard's Lease while any live shard
  Lease of another count is held by someone else (one LIST of the namespace's Leases per try).
  Under another count the same clusters fall in other shards, so only this keeps a replica of
  the old count and one of the new from writing one cluster at once: the new ones wait until
  the old ones have released their Leases (SIGTERM) or those have expired. Leases written
  without the annotation (before it existed) do not fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from secretsync.core import errors
from secretsync.core.model import Cluster
from secretsync.delivery.rendered import Rendered
from secretsync.kube.leases import LeaseElector, LeaseTiming, list_leases
from secretsync.sinks.deliver import ApplyResult, ChangeSet, DelegatingSink, Sink

if TYPE_CHECKING:
    from secretsync.kube.clusters import Endpoint

log = logging.getLogger(__name__)

GIT_LEASE = "secretsync-git"
SHARD_INDEX_ENV = "SECRETSYNC_SHARD_INDEX"
SHARDS_ANNOTATION = "secretsync.dev/shards"
_SHARD_LEASE = re.compile(r"secretsync-shard-[0-9]+\Z")


def shard_lease(index: int) -> str:
    return f"secretsync-shard-{index}"


def shard_of(cluster: str, shards: int) -> int:
    """The shard of a cluster name: stable across processes, hosts and Python versions."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    digest = hashlib.sha256(cluster.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def derive_shard_index(
    *, explicit: int | None, env: Mapping[str, str], hostname: str | None = None
) -> int | None:
    """`--shard-index`, else `$SECRETSYNC_SHARD_INDEX`, else the StatefulSet ordinal at the end
    of the pod name (`secretsync-2` -> 2); None when none says."""
    if explicit is not None:
        return explicit
    text = env.get(SHARD_INDEX_ENV, "").strip()
    if text:
        if not text.isdigit():
            raise ValueError(f"${SHARD_INDEX_ENV} must be a non-negative integer")
        return int(text)
    name = hostname if hostname is not None else env.get("HOSTNAME") or socket.gethostname()
    match = re.search(r"-([0-9]+)\Z", name or "")
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True, kw_only=True)
class ElectionSettings:
    """How this replica takes part in elections (home cluster Leases)."""

    shards: int = 1
    shard_index: int = 0
    namespace: str = "default"
    identity: str
    timing: LeaseTiming = field(default_factory=LeaseTiming)

    def __post_init__(self) -> None:
        if self.shards < 1 or not 0 <= self.shard_index < self.shards:
            raise ValueError(f"shard index {self.shard_index} is not in 0..{self.shards - 1}")


@dataclass(frozen=True, slots=True)
class Scope:
    """What one cycle may touch: `clusters` (empty: every cluster) and whether Git is written."""

    clusters: tuple[str, ...]
    git: bool


class Coordinator:
    """The Leases of one replica: its shard's and the Git writeback's."""

    def __init__(
        self,
        *,
        api: Endpoint,
        settings: ElectionSettings,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_change = on_change
        s = settings
        self.git = LeaseElector(
            api=api,
            namespace=s.namespace,
            name=GIT_LEASE,
            identity=s.identity,
            timing=s.timing,
            on_change=self._changed,
        )
        self.api = api
        self.shard = LeaseElector(
            api=api,
            namespace=s.namespace,
            name=shard_lease(s.shard_index),
            identity=s.identity,
            timing=s.timing,
            on_change=self._changed,
            annotations={SHARDS_ANNOTATION: str(s.shards)},
            fence=self.fence,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def fence(self) -> str | None:
        """Why this replica may not hold its shard's Lease now: a live shard Lease of another
        shard count held by another replica; None when there is none."""
        s = self.settings
        records = await list_leases(
            self.api,
            s.namespace,
            now=datetime.now(UTC),
            timeout_s=max(1.0, s.timing.renew_deadline_s / 2),
        )
        for r in sorted(records, key=lambda r: r.name):
            count = r.annotations.get(SHARDS_ANNOTATION)
            if (
                _SHARD_LEASE.match(r.name)
                and r.live
                and r.holder != s.identity
                and count is not None
                and count != str(s.shards)
            ):
                return (
                    f"Lease {r.name} is held by {r.holder} with --shards {count} (this replica: "
                    f"--shards {s.shards}); waiting until it is released or expires"
                )
        return None

    def _changed(self, lease: str, leading: bool) -> None:
        if self.on_change is not None:
            self.on_change(lease, leading)

    @property
    def electors(self) -> tuple[LeaseElector, LeaseElector]:
        return (self.git, self.shard)

    # --- who may do what -------------------------------------------------------------------------

    def shard_for(self, cluster: str) -> int:
        """The shard `cluster` belongs to, at this replica's shard count."""
        return shard_of(cluster, self.settings.shards)

    def mine(self, cluster: str) -> bool:
        """Whether `cluster` is in this replica's shard (leadership aside)."""
        return self.shard_for(cluster) == self.settings.shard_index

    def owns(self, cluster: str) -> bool:
        """Whether this replica may write `cluster` through its API now."""
        return self.mine(cluster) and self.shard.is_leader

    def writes_git(self) -> bool:
        return self.git.is_leader

    def scope(self, clusters: Iterable[str]) -> Scope | None:
        """The clusters a cycle starting now may touch; None when there is nothing to do."""
        if self.writes_git():
            return Scope(clusters=(), git=True)  # Git renders every cluster; APIs stay gated
        owned = tuple(sorted(n for n in clusters if self.owns(n)))
        return Scope(clusters=owned, git=False) if owned else None

    def gate(self, sink: Sink) -> Sink:
        """`sink` restricted to what this replica may write: Git on the Git leader, a cluster's
        API on its shard's leader."""
        if sink.shared:
            return GatedSink(sink, allowed=lambda _name: self.writes_git())
        return GatedSink(sink, allowed=self.owns)

    def leases(self) -> dict[str, bool]:
        return {e.name: e.is_leader for e in self.electors}

    def document(self, clusters: Iterable[str] = ()) -> dict[str, Any]:
        """Leadership for `/v1/status`."""
        s = self.settings
        return {
            "identity": s.identity,
            "namespace": s.namespace,
            "shards": s.shards,
            "shardIndex": s.shard_index,
            "leases": self.leases(),
            "leading": self.shard.is_leader,
            "fence": self.shard.fenced,
            "gitWriter": self.writes_git(),
            "clusters": sorted(n for n in clusters if self.mine(n)),
        }

    # --- lifetime --------------------------------------------------------------------------------

    def start(self) -> None:
        for elector in self.electors:
            self._tasks.append(asyncio.create_task(elector.run(), name=f"lease-{elector.name}"))

    async def first_round(self) -> None:
        """Wait until every Lease has had its first election step (won, lost or failed), for
        at most one renew deadline: a cycle before that would find nothing it may write."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.timing.renew_deadline_s):
                for elector in self.electors:
                    await elector.stepped.wait()

    async def stop(self, *, release: bool = True) -> None:
        """Stop contending and release what is held (graceful stop: followers take over at
        once). `release=False` leaves the Leases to expire, as a crash would."""
        for elector in self.electors:
            elector.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if release:
            await asyncio.gather(*(e.release() for e in self.electors))


class GatedSink(DelegatingSink):
    """A sink that only observes and writes what `allowed(cluster name)` permits, checked again
    right before each write. Everything else is the wrapped sink's own: whether it stages (and
    so how the engine batches its objects), what it writes ahead and when a cluster is done."""

    def __init__(self, inner: Sink, *, allowed: Callable[[str], bool]) -> None:
        super().__init__(inner)
        self._allowed = allowed

    def accepts(self, cluster: Cluster) -> bool:
        return self._allowed(cluster.name) and self.inner.accepts(cluster)

    def observes(self, cluster: Cluster) -> bool:
        return self._allowed(cluster.name) and self.inner.observes(cluster)

    def stage(self, cluster: Cluster, item: Rendered) -> None:
        if self._allowed(cluster.name):  # else `apply` refuses: nothing to write ahead
            self.inner.stage(cluster, item)

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult:
        self._check(cluster)
        return await self.inner.apply(cluster, changes)

    async def finish_cluster(self, cluster: Cluster) -> None:
        self._check(cluster)
        await self.inner.finish_cluster(cluster)

    def _check(self, cluster: Cluster) -> None:
        if not self._allowed(cluster.name):
            raise errors.DeliveryError(
                f"not written: this replica lost the Lease for {self.inner.name} "
                f"({cluster.name}) during the cycle"
            )

    async def orphans(self, known: Set[str]) -> list[str]:
        return [n for n in await self.inner.orphans(known) if self._allowed(n)]

"""Test doubles of secretsync's own interfaces (never of third-party clients)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Set
from typing import ClassVar

from secretsync.core import errors
from secretsync.core.model import Cluster, Location, ObjectKey, Observed
from secretsync.delivery.rendered import Rendered
from secretsync.sinks.deliver import ApplyResult, ChangeSet
from secretsync.sources.resolve import Document, Fetched


class FakeSource:
    """An in-memory source: documents by Location path, with failures to inject and a read log."""

    kind: ClassVar[str] = "vault"

    def __init__(self, documents: Mapping[str, Document] | None = None, *, kind: str = "vault"):
        self.documents: dict[str, Document] = dict(documents or {})
        self.failing: dict[str, errors.ResolveError] = {}
        self.reads: list[Location] = []
        self.kind = kind  # type: ignore[misc]

    async def fetch(self, location: Location) -> Fetched:
        self.reads.append(location)
        if location.path in self.failing:
            raise self.failing[location.path]
        if location.path not in self.documents:
            raise errors.RefNotFound(f"{location}: not found")
        return Fetched(self.documents[location.path], version="1")

    async def aclose(self) -> None:
        return None


class MemorySink:
    """An in-memory sink of our own: holds one Observed per object, like a cluster would."""

    name: ClassVar[str] = "memory"
    stages: ClassVar[bool] = False
    shared: ClassVar[bool] = False

    def __init__(self, *, log: bool = False) -> None:
        self.objects: dict[str, dict[ObjectKey, Observed]] = {}
        self.log = log
        self.writes = 0
        self.deletes = 0
        self.applied: list[ChangeSet] = []  # with `log`: every change set applied, in order
        self.finished: list[str] = []  # clusters finished, in order

    def progress(self, cluster: Cluster, mark: Callable[[], None] | None) -> None:
        return None  # memory answers at once: nothing to count down

    def accepts(self, cluster: Cluster) -> bool:
        return True

    def observes(self, cluster: Cluster) -> bool:
        return True

    async def observe(self, cluster: Cluster) -> Mapping[ObjectKey, Observed]:
        return dict(self.objects.get(cluster.name, {}))

    async def detail(self, observed: Observed) -> Observed:
        return observed

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult:
        held = self.objects.setdefault(cluster.name, {})
        result = ApplyResult()
        if self.log:
            self.applied.append(changes)
        for item in [*changes.create, *changes.update]:
            held[item.key] = observed_of(item)
            result.written.append(item.key)
            self.writes += 1
        for gone in changes.delete:
            held.pop(gone.key, None)
            result.deleted.append(gone.key)
            self.deletes += 1
        await asyncio.sleep(0)
        return result

    def stage(self, cluster: Cluster, item: Rendered) -> None:
        raise AssertionError("a sink that does not stage is never asked to")

    async def finish_cluster(self, cluster: Cluster) -> None:
        self.finished.append(cluster.name)

    def discard(self, cluster: Cluster) -> None:
        return None

    async def orphans(self, known: Set[str]) -> list[str]:
        """Clusters that still hold objects and are no longer in the fleet."""
        return sorted(name for name, held in self.objects.items() if held and name not in known)


def observed_of(item: Rendered) -> Observed:
    spec = item.manifest.get("spec")
    encrypted = spec.get("encryptedData", {}) if isinstance(spec, Mapping) else {}
    return Observed(
        key=item.key,
        kind=item.kind,
        owned=True,
        fleet_secret=item.fleet_secret,
        content_hash=item.content_hash,
        key_hashes=dict(item.key_hashes),
        encrypted=dict(encrypted),
    )

"""Rotation without webhooks: a cheap poll of the KV v2 metadata versions of the paths in use.

Every `interval` seconds the poller asks each source that can tell (a pollable kind, see
`sources.kinds`: every Vault source, named ones too, each Location as its own identity) for
the latest version of each unpinned Location whose values the fleet delivers
(`current_versions`: metadata only, never a value), compares them with the versions it saw
last time, and hands the names of the paths that moved to `submit` — the same queue the
rotation webhook feeds, so a narrowed cycle re-reads exactly those paths. A path seen for the
first time only sets the baseline (the full cycle that brought it in reads it anyway). When a
server cannot be asked, its part of the round is skipped and nothing of it is forgotten; a
path that cannot be polled (KV v1, no secret, no `read` on its metadata) is left to full
cycles and webhooks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol, runtime_checkable

from secretsync.core import errors
from secretsync.core.model import DesiredSecret, Location
from secretsync.delivery import kinds as delivery_kinds
from secretsync.sources import kinds

log = logging.getLogger(__name__)


@runtime_checkable
class VersionSource(Protocol):
    """A source that can tell the latest version of Locations without reading them."""

    async def current_versions(
        self, locations: Iterable[Location]
    ) -> Mapping[Location, int | None]: ...


def polled_locations(desired: Iterable[DesiredSecret]) -> frozenset[Location]:
    """The unpinned Locations of pollable kinds whose values are delivered (external objects
    need none)."""
    pollable = {name for name, kind in kinds.kinds().items() if kind.pollable}
    return frozenset(
        r.location
        for d in desired
        if delivery_kinds.get(d.delivery).reads_values
        for r in d.refs()
        if r.location.source in pollable and r.location.version is None
    )


class VersionPoller:
    """Remembers the last seen version of each polled Location; see the module docstring."""

    def __init__(
        self,
        *,
        interval_s: float,
        locations: Callable[[], frozenset[Location]],
        sources: Callable[[], Awaitable[Mapping[str, VersionSource]]],
        submit: Callable[[tuple[str, ...]], object],
    ) -> None:
        self.interval_s = interval_s
        self.seen: dict[Location, int | None] = {}
        self.rounds = 0
        self._locations = locations
        self._sources = sources
        self._submit = submit
        self._problem: str | None = None

    async def run(self) -> None:
        """Poll until cancelled; a failed round is logged and the next one comes on time."""
        while True:
            try:
                await self.poll_once()
            except Exception as exc:  # the poller must outlive any one round
                log.error("poll: round failed (%s)", type(exc).__name__)
            # until the first answered round (the fleet loads first), retry sooner
            await asyncio.sleep(self.interval_s if self.rounds else min(self.interval_s, 1.0))

    async def poll_once(self) -> tuple[str, ...]:
        """One round; the path names queued for a narrowed cycle."""
        locations = self._locations()
        if not locations:
            self.seen.clear()
            return ()
        sources = await self._sources()
        by_source: dict[str, list[Location]] = {}
        for location in sorted(locations, key=str):
            if location.source_key in sources:
                by_source.setdefault(location.source_key, []).append(location)
        if not by_source:
            return ()
        current: dict[Location, int | None] = {}
        asked: list[Location] = []
        skipped: list[str] = []
        for key, wanted in by_source.items():
            try:
                current.update(await sources[key].current_versions(wanted))
            except errors.ResolveError as exc:  # nothing is known of them: nothing is forgotten
                skipped.append(f"skipped: {exc}")
                continue
            asked.extend(wanted)
        if not asked:
            self._note("; ".join(skipped))
            return ()
        self.rounds += 1
        changed: list[str] = []
        for location in sorted(asked, key=str):
            version = current.get(location)
            before = self.seen.get(location, version)
            if version is not None and before != version:
                changed.append(kinds.path_names(location)[0])
            self.seen[location] = version
        for gone in self.seen.keys() - locations:
            del self.seen[gone]
        blind = sum(1 for location in asked if self.seen.get(location) is None)
        self._note(
            "; ".join(skipped)
            if skipped
            else f"{blind} of {len(asked)} path(s) cannot be polled (KV v1, missing, or no read "
            "on their metadata): full cycles and webhooks still cover them"
            if blind
            else None
        )
        if changed:
            log.info(
                "poll: new version of %d path(s): %s; queued a narrowed cycle",
                len(changed),
                ", ".join(changed[:10]) + (", ..." if len(changed) > 10 else ""),
            )
            self._submit(tuple(changed))
        return tuple(changed)

    def _note(self, problem: str | None) -> None:
        """Log a problem when it first shows up (not every round)."""
        if problem is not None and problem != self._problem:
            log.warning("poll: %s", problem)
        self._problem = problem

"""The daemon's status board: per cluster x FleetSecret, what the last cycles found. In memory.

The board owns the inventory that `/v1/status`, the fleet page and the `secretsync_objects`
gauge show. It is fed from the fleet (what is planned) and from `CycleReport`s (what happened),
and holds names, refs, keyed content hashes, reasons and times: never a value.

States:

- `pending`: planned, never delivered yet (a new FleetSecret or cluster before its first cycle);
- `synced`: the last cycle that looked at it found it delivered as desired (or delivered it);
- `drifted`: the last cycle found it changed outside secretsync and repaired it;
- `failed`: the last cycle could not deliver it; the reason says why, and what was delivered
  before stays in place (its last sync time is kept);
- `undelivered`: no sink of this process delivers to its cluster (e.g. `serve --no-git` for a
  sealed cluster); the reason says which delivery and which sink is off.

An object delivered by two sinks (Git and the Kubernetes API) shows the worst of the two.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from secretsync.core.model import DesiredSecret, Fleet
from secretsync.engine.report import CycleReport, ItemResult


class State(enum.StrEnum):
    SYNCED = "synced"
    DRIFTED = "drifted"
    FAILED = "failed"
    PENDING = "pending"
    UNDELIVERED = "undelivered"


_STATES = {s.value: s for s in State}
_SEVERITY = {
    State.SYNCED: 0,
    State.UNDELIVERED: 1,
    State.PENDING: 1,
    State.DRIFTED: 2,
    State.FAILED: 3,
}
DRIFT_REASON = "repaired: changed outside secretsync"


@dataclass(slots=True, kw_only=True)
class Entry:
    """One FleetSecret on one cluster."""

    cluster: str
    fleet_secret: str
    namespace: str
    name: str
    delivery: str
    state: State = State.PENDING
    reason: str = ""
    refs: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)  # Vault `<mount>/<path>` -> version
    content_hash: str | None = None
    last_sync: datetime | None = None
    sinks: tuple[str, ...] = ()
    committed: str | None = None  # the write-back commit that carries it (serve --git-push)
    pushed: bool | None = None

    def document(self) -> dict[str, Any]:
        return self._push() | {
            "cluster": self.cluster,
            "fleetSecret": self.fleet_secret,
            "object": f"{self.namespace}/{self.name}",
            "delivery": self.delivery,
            "sinks": list(self.sinks),
            "state": self.state.value,
            "reason": self.reason,
            "refs": list(self.refs),
            "versions": dict(self.versions),
            "contentHash": self.content_hash,
            "lastSync": _iso(self.last_sync),
        }

    def _push(self) -> dict[str, Any]:
        return {"committed": self.committed, "pushed": self.pushed} if self.committed else {}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Entry:
        """The entry another replica served as `document()` (`fleetview`); ValueError when a
        field is missing or of the wrong type. (A peer's shard is tens of thousands of these:
        checks are plain type tests, ~10 µs an entry.)"""
        try:
            obj, cluster, fleet_secret = doc["object"], doc["cluster"], doc["fleetSecret"]
            delivery, reason, state = doc["delivery"], doc["reason"], _STATES[doc["state"]]
            refs, sinks, versions = doc["refs"], doc["sinks"], doc["versions"]
            content_hash, last_sync = doc.get("contentHash"), doc.get("lastSync")
            committed, pushed = doc.get("committed"), doc.get("pushed")
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a status object ({type(exc).__name__})") from None
        texts = (obj, cluster, fleet_secret, delivery, reason, *refs, *sinks)
        optional = (content_hash, last_sync, committed)
        if (
            type(refs) is not list
            or type(sinks) is not list
            or not all(type(t) is str for t in texts)
            or not all(t is None or type(t) is str for t in optional)
            or type(versions) is not dict
            or not all(type(k) is str and type(v) is str for k, v in versions.items())
        ):
            raise ValueError("not a status object (a field of the wrong type)")
        namespace, _, name = obj.partition("/")
        return cls(
            cluster=cluster,
            fleet_secret=fleet_secret,
            namespace=namespace,
            name=name,
            delivery=delivery,
            state=state,
            reason=reason,
            refs=tuple(refs),
            versions=versions,
            content_hash=content_hash,
            last_sync=None if last_sync is None else datetime.fromisoformat(last_sync),
            sinks=tuple(sinks),
            committed=committed,
            pushed=pushed if isinstance(pushed, bool) else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleSummary:
    started: datetime
    duration_s: float
    trigger: str  # start | interval | webhook
    outcome: str  # ok | failed | error
    counts: Mapping[str, int]
    failed_clusters: Mapping[str, str] = field(default_factory=dict)
    error: str = ""

    def document(self) -> dict[str, Any]:
        return {
            "started": _iso(self.started),
            "durationSeconds": round(self.duration_s, 3),
            "trigger": self.trigger,
            "outcome": self.outcome,
            "counts": dict(self.counts),
            "failedClusters": dict(self.failed_clusters),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldDeletes:
    """Deletes on one cluster kept back by the Fleet's delete limit (names, never values)."""

    objects: tuple[str, ...]
    reason: str

    @property
    def headline(self) -> str:
        return f"{len(self.objects)} deletes held: over the delete limit"

    def document(self) -> dict[str, Any]:
        return {"count": len(self.objects), "objects": list(self.objects), "reason": self.reason}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> HeldDeletes:
        """ValueError when `doc` is not what `document()` makes."""
        try:
            return cls(objects=tuple(_text(o) for o in doc["objects"]), reason=_text(doc["reason"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a held-deletes block ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterInfo:
    name: str
    delivery: str
    labels: Mapping[str, str]
    readers: tuple[str, ...] = ()
    """The sources the cluster's objects are read from, each with the identity that reads
    (`vault:eu as role=secretsync-acme`): names of roles, namespaces and files, never a token."""


class StatusBoard:
    """The inventory, updated by the daemon's single cycle loop and read by the web handlers
    (all on one event loop, so no locks)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], Entry] = {}
        self.clusters: dict[str, ClusterInfo] = {}
        self.fleet_name: str | None = None
        self.fleet_loaded_at: datetime | None = None
        self.fleet_error: str | None = None
        self.fleet_error_at: datetime | None = None
        self.commit: str | None = None  # the running commit, when the daemon pulls Git itself
        self.refused_commit: str | None = None
        self.last_cycle: CycleSummary | None = None
        self.cycles = 0
        self.leadership: Callable[[], dict[str, Any]] | None = None  # set with election on
        self.last_push: dict[str, Any] | None = None  # with serve --git-push
        self.certificates: dict[str, dict[str, Any]] = {}  # sealed clusters' certificates
        self.held: dict[str, HeldDeletes] = {}  # cluster -> deletes kept back by the limit
        self.generation = 0  # bumped when a load adds or removes objects (paging tokens)
        # the fleet-wide view across shard replicas (`fleetview`) fills these two: per cluster,
        # its shard and where its states come from; per shard, the replica that answered
        self.cluster_sources: dict[str, dict[str, Any]] = {}
        self.replicas: list[dict[str, Any]] | None = None
        self._order: tuple[dict[tuple[str, str], Entry], list[tuple[str, str]]] | None = None

    # --- feeding -------------------------------------------------------------------------------

    def fleet_loaded(
        self,
        fleet: Fleet,
        desired: Iterable[DesiredSecret],
        *,
        at: datetime,
        commit: str | None = None,
    ) -> None:
        """A good fleet: planned objects not seen before become pending; objects no longer
        planned leave the board. The previous load error, if any, is cleared."""
        self.fleet_name = fleet.name
        self.fleet_loaded_at = at
        self.fleet_error = self.fleet_error_at = None
        self.commit, self.refused_commit = commit, None
        desired = list(desired)
        readers: dict[str, dict[str, None]] = {}
        for d in desired:
            seen = readers.setdefault(d.cluster.name, {})
            for ref in d.refs():
                loc = ref.location
                who = f" as {loc.identity}" if loc.identity is not None else ""
                seen[f"{loc.source_key}{who}"] = None
        self.clusters = {
            name: ClusterInfo(
                name=name,
                delivery=c.delivery,
                labels=dict(c.labels),
                readers=tuple(sorted(readers.get(name, {}))),
            )
            for name, c in sorted(fleet.clusters.items())
        }
        planned: dict[tuple[str, str], Entry] = {}
        for d in desired:
            key = (d.cluster.name, d.fleet_secret)
            entry = self.entries.get(key)
            if entry is None:
                entry = Entry(
                    cluster=d.cluster.name,
                    fleet_secret=d.fleet_secret,
                    namespace=d.target.namespace,
                    name=d.target.name,
                    delivery=d.delivery,
                )
            entry.namespace, entry.name = d.target.namespace, d.target.name
            entry.delivery = d.delivery
            entry.refs = tuple(sorted({str(r) for r in d.refs()}))
            planned[key] = entry
        if planned.keys() != self.entries.keys():
            self.generation += 1
        self.entries = planned

    def undelivered(self, reasons: Mapping[str, str]) -> None:
        """Clusters no sink of this process delivers to (name -> why): their objects show
        `undelivered` with that reason rather than `pending` forever; a cluster that a sink
        takes again goes back to `pending` until its next cycle."""
        for entry in self.entries.values():
            reason = reasons.get(entry.cluster)
            if reason is not None:
                entry.state, entry.reason = State.UNDELIVERED, reason
            elif entry.state is State.UNDELIVERED:
                entry.state, entry.reason = State.PENDING, ""

    def fleet_failed(self, message: str, *, at: datetime, commit: str | None = None) -> None:
        """A fleet repo that does not load (at `commit`, when known): the last good one keeps
        running."""
        self.fleet_error = message
        self.fleet_error_at = at
        self.refused_commit = commit

    def record(
        self,
        report: CycleReport,
        *,
        started: datetime,
        duration_s: float,
        trigger: str,
    ) -> CycleSummary:
        """Apply one cycle's outcome. Only objects the report names change (a narrowed cycle
        leaves the others as they were); a cluster that failed as a whole fails its objects."""
        by_entry: dict[tuple[str, str], list[ItemResult]] = {}
        counts = {"create": 0, "update": 0, "delete": 0, "held": 0, "unchanged": 0, "failed": 0}
        for item in report.items:
            counts[item.action] = counts.get(item.action, 0) + 1
            if item.fleet_secret is None or item.action in ("delete", "held"):
                continue
            by_entry.setdefault((item.cluster, item.fleet_secret), []).append(item)
        for key, items in by_entry.items():
            entry = self.entries.get(key)
            if entry is not None:
                _apply(entry, items, at=started)
        if report.pruned:  # a cycle that looked for deletes knows every held one
            self.held = {
                name: HeldDeletes(
                    objects=tuple(sorted(f"{i.namespace}/{i.name}" for i in items)),
                    reason=items[0].reason,
                )
                for name, items in report.held_by_cluster().items()
            }
        for name, reason in report.failed_clusters.items():
            for entry in self.entries.values():
                if entry.cluster == name:
                    entry.state, entry.reason = State.FAILED, f"cluster failed: {reason}"
        outcome = "ok" if report.ok else "failed"
        summary = CycleSummary(
            started=started,
            duration_s=duration_s,
            trigger=trigger,
            outcome=outcome,
            counts=counts,
            failed_clusters=dict(report.failed_clusters),
        )
        self.last_cycle = summary
        self.cycles += 1
        return summary

    def cycle_error(
        self, message: str, *, started: datetime, duration_s: float, trigger: str
    ) -> None:
        """A cycle that stopped with an error before it had a report."""
        self.last_cycle = CycleSummary(
            started=started,
            duration_s=duration_s,
            trigger=trigger,
            outcome="error",
            counts={},
            error=message,
        )
        self.cycles += 1

    def certificates_read(
        self, expiry: Mapping[str, datetime], *, now: datetime, warn_days: int
    ) -> None:
        """When each sealing certificate expires; one within `warn_days` gets a warning."""
        self.certificates = {}
        for cluster, at in sorted(expiry.items()):
            days = (at - now).total_seconds() / 86400
            warning = ""
            if days < 0:
                warning = "expired: nothing new is sealed for this cluster"
            elif days <= warn_days:
                warning = (
                    f"expires in {days:.1f} days: run `secretsync cluster refresh-cert {cluster}`"
                )
            self.certificates[cluster] = {"notAfter": _iso(at), "warning": warning}

    def pushed(
        self, outcome: dict[str, Any], *, carried: Iterable[tuple[str, str | None]], pushed: bool
    ) -> None:
        """A write-back commit (and its push, or why not): the objects it carries record it."""
        self.last_push = outcome
        sha = outcome.get("commit")
        for cluster, fleet_secret in carried:
            entry = self.entries.get((cluster, fleet_secret or ""))
            if entry is not None and isinstance(sha, str):
                entry.committed, entry.pushed = sha, pushed

    # --- reading -------------------------------------------------------------------------------

    def counts(self) -> dict[tuple[str, str], int]:
        """Objects per (cluster, state), every state present for every cluster."""
        out = {(c, s.value): 0 for c in self.clusters for s in State}
        for entry in self.entries.values():
            key = (entry.cluster, entry.state.value)
            out[key] = out.get(key, 0) + 1
        return out

    def totals(self) -> dict[str, int]:
        out = {s.value: 0 for s in State}
        for entry in self.entries.values():
            out[entry.state.value] += 1
        return out

    def sorted_entries(self) -> list[Entry]:
        return [self.entries[k] for k in self.sorted_keys()]

    def sorted_keys(self) -> list[tuple[str, str]]:
        """The entries' keys in order, sorted once per load (the dict is replaced on each)."""
        order = self._order
        if order is None or order[0] is not self.entries or len(order[1]) != len(self.entries):
            order = self._order = (self.entries, sorted(self.entries))
        return order[1]

    def fleet_document(self) -> dict[str, Any]:
        return {
            "name": self.fleet_name,
            "loadedAt": _iso(self.fleet_loaded_at),
            "error": self.fleet_error,
            "errorAt": _iso(self.fleet_error_at),
            "commit": self.commit,
            "refusedCommit": self.refused_commit,
        }

    def document(self, *, objects: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The JSON inventory of `/v1/status`: every object, or the `objects` given (a page)."""
        if objects is None:
            objects = [e.document() for e in self.sorted_entries()]
        return {
            "fleet": self.fleet_document(),
            "clusters": [
                {
                    "name": c.name,
                    "delivery": c.delivery,
                    "labels": dict(c.labels),
                    "sources": list(c.readers),
                }
                | self.cluster_sources.get(c.name, {})
                for c in self.clusters.values()
            ],
            "totals": self.totals(),
            "cycles": self.cycles,
            "lastCycle": self.last_cycle.document() if self.last_cycle else None,
            "objects": objects,
            "deletesHeld": {name: h.document() for name, h in self.held.items()},
        } | self._extras()

    def _extras(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.leadership is not None:
            out["leadership"] = self.leadership()
        if self.last_push is not None:
            out["lastPush"] = self.last_push
        if self.certificates:
            out["certificates"] = self.certificates
        if self.replicas is not None:
            out["replicas"] = self.replicas
        return out


def _apply(entry: Entry, items: list[ItemResult], *, at: datetime) -> None:
    worst = State.SYNCED
    reasons: list[str] = []
    content_hash = entry.content_hash
    for item in items:
        if item.action == "failed":
            state = State.FAILED
        else:
            state = State.DRIFTED if item.reason == DRIFT_REASON else State.SYNCED
            content_hash = item.content_hash or content_hash
            if item.source_versions:
                entry.versions = dict(item.source_versions)
        if item.reason:
            reasons.append(f"{item.sink}: {item.reason}" if len(items) > 1 else item.reason)
        if _SEVERITY[state] > _SEVERITY[worst]:
            worst = state
    entry.state = worst
    entry.reason = "; ".join(reasons)
    entry.sinks = tuple(sorted({i.sink for i in items}))
    entry.content_hash = content_hash
    if worst is not State.FAILED:
        entry.last_sync = at


def _iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") if at else None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value

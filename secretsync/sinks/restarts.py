"""Workload restarts of a cycle: collected per cluster while objects are applied, then made
once per workload, and only when the Secret the pods read really holds the new content.

A Deployment that mounts two Secrets which change in one cycle is restarted once, not twice.
A SealedSecret is turned into its Secret by the sealed-secrets controller, which copies the
template's annotations, `secretsync.dev/content-hash` among them: a workload waiting for it is
restarted only once that Secret carries the hash that was delivered, so its pods never start
on the old value. A restart whose Secret is not updated yet stays pending for the next cycle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery.rendered import Rendered


@dataclass(frozen=True, slots=True, order=True)
class Workload:
    kind: str  # Deployment | StatefulSet | DaemonSet
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Cause:
    """One changed object a workload restarts for (names and keyed hashes, never values)."""

    secret: str  # the Secret's name: the delivered object's, or the one its controller writes
    content_hash: str
    via_controller: bool  # a controller writes the Secret (SealedSecret): wait for it


@dataclass(slots=True)
class Restarts:
    """The restarts owed per cluster: workload -> Secret name -> the latest cause."""

    owed: dict[str, dict[Workload, dict[str, Cause]]] = field(default_factory=dict)

    def add(self, cluster: str, item: Rendered) -> None:
        """`item` was written: every workload its FleetSecret names owes a restart for it."""
        cause = Cause(
            secret=item.key.name,
            content_hash=item.content_hash,
            via_controller=delivery_kinds.get(item.delivery).controller_writes_secret,
        )
        for ref in item.restarts:
            workload = Workload(ref.kind, item.key.namespace, ref.name)
            self.owed.setdefault(cluster, {}).setdefault(workload, {})[cause.secret] = cause

    def take(self, cluster: str) -> dict[Workload, dict[str, Cause]]:
        """What `cluster` owes, removed: what is not made is given back with `keep`."""
        return self.owed.pop(cluster, {})

    def keep(self, cluster: str, workload: Workload, causes: Mapping[str, Cause]) -> None:
        held = self.owed.setdefault(cluster, {}).setdefault(workload, {})
        for name, cause in causes.items():
            held.setdefault(name, cause)  # a newer cause added meanwhile wins

    def pending(self) -> dict[str, list[str]]:
        """Restarts still owed, per cluster (workloads named, for the report)."""
        return {
            cluster: [str(w) for w in sorted(owed)] for cluster, owed in sorted(self.owed.items())
        }

    def forget(self, known: Iterable[str]) -> None:
        """Drop what is owed on clusters no longer served (they left the fleet)."""
        keep = set(known)
        for cluster in [c for c in self.owed if c not in keep]:
            del self.owed[cluster]


def stamp(causes: Mapping[str, Cause]) -> str:
    """The pod-template annotation's value: it changes exactly when what the pods read changes.
    One Secret: `<name>@<hash prefix>`; several: their count and a digest of all of them."""
    if len(causes) == 1:
        (cause,) = causes.values()
        return f"{cause.secret}@{cause.content_hash[:16]}"
    joined = ",".join(f"{c.secret}@{c.content_hash}" for _, c in sorted(causes.items()))
    return f"{len(causes)} secrets@{hashlib.sha256(joined.encode()).hexdigest()[:16]}"

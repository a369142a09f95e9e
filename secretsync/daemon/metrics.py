"""The daemon's Prometheus metrics, on a registry of its own (never the process-global one).

Labels are cluster names, sources, outcomes and states: never a value, never a path.

| metric | type | labels |
|---|---|---|
| `secretsync_cycles_total` | counter | `outcome` (ok, failed, error), `trigger` |
| `secretsync_cycle_duration_seconds` | histogram | — |
| `secretsync_objects` | gauge | `cluster`, `state` |
| `secretsync_source_reads_total` | counter | `source`, `outcome` (ok, error) |
| `secretsync_source_logins` | gauge | `source` (logins since the source was built) |
| `secretsync_failures_total` | counter | `cluster` |
| `secretsync_writes_total` | counter | — |
| `secretsync_webhooks_total` | counter | `outcome` |
| `secretsync_webhook_forwards_total` | counter | `outcome` |
| `secretsync_peer_status_fetches_total` | counter | `outcome` (ok, failed: the fleet-wide status) |
| `secretsync_http_dropped_total` | counter | `reason` (header, idle: a slow or silent client) |
| `secretsync_fleet_load_errors_total` | counter | — |
| `secretsync_leader` | gauge | `lease` (1 while this replica holds it; only with election) |
| `secretsync_stale_paths` | gauge | `source` (locations whose last read failed) |
| `secretsync_deletes_held` | gauge | `cluster` (deletes kept back by the delete limit) |
| `secretsync_git_push_total` | counter | `result` (ok, rejected: the branch moved, failed) |
| `secretsync_git_push_duration_seconds` | histogram | — (commit to pushed, retries included) |
| `secretsync_git_last_push_timestamp_seconds` | gauge | — (Unix time of the last push) |
| `secretsync_certificate_expiry_timestamp_seconds` | gauge | `cluster` (sealing certificates) |
| `secretsync_events_total` | counter | `outcome` (created, patched, failed, dropped, limited) |
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from secretsync.core.model import Location
from secretsync.engine.report import CycleReport

CONTENT_TYPE = CONTENT_TYPE_LATEST

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """The daemon's collectors. They are defined by area below, in the order the exposition
    lists them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._cycles(r)
        self._sources(r)
        self._deliveries(r)
        self._http(r)
        self._fleet(r)
        self._writeback(r)
        self._events(r)
        self._stale: set[Location] = set()

    def _cycles(self, r: CollectorRegistry) -> None:
        """Cycles: how many, how long, and the objects they left in each state."""
        self.cycles = Counter(
            "secretsync_cycles", "Reconcile cycles run.", ["outcome", "trigger"], registry=r
        )
        self.cycle_duration = Histogram(
            "secretsync_cycle_duration_seconds",
            "Duration of reconcile cycles.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.objects = Gauge(
            "secretsync_objects", "Objects by cluster and state.", ["cluster", "state"], registry=r
        )

    def _sources(self, r: CollectorRegistry) -> None:
        """Sources: reads of locations, and the logins made for them."""
        self.source_reads = Counter(
            "secretsync_source_reads",
            "Reads of source locations.",
            ["source", "outcome"],
            registry=r,
        )
        self.logins = Gauge(
            "secretsync_source_logins",
            "Logins (or token checks) each source made since it was built: one per identity "
            "per token lifetime.",
            ["source"],
            registry=r,
        )

    def _deliveries(self, r: CollectorRegistry) -> None:
        """What cycles delivered: objects (or whole clusters) that failed, objects written."""
        self.failures = Counter(
            "secretsync_failures",
            "Objects (or whole clusters) that failed.",
            ["cluster"],
            registry=r,
        )
        self.writes = Counter(
            "secretsync_writes", "Objects created, updated or deleted in sinks.", registry=r
        )

    def _http(self, r: CollectorRegistry) -> None:
        """The HTTP surface: webhooks, their forwards to peers, peer status fetches, connections
        dropped."""
        self.webhooks = Counter(
            "secretsync_webhooks", "Rotation webhook requests.", ["outcome"], registry=r
        )
        self.webhook_forwards = Counter(
            "secretsync_webhook_forwards",
            "Verified webhooks forwarded to a peer replica, by outcome (sent, failed).",
            ["outcome"],
            registry=r,
        )
        self.peer_status_fetches = Counter(
            "secretsync_peer_status_fetches",
            "Peer status fetches for the fleet-wide status, by outcome (ok, failed).",
            ["outcome"],
            registry=r,
        )
        self.http_dropped = Counter(
            "secretsync_http_dropped",
            "Connections dropped for a request head not read in time or for idling.",
            ["reason"],
            registry=r,
        )

    def _fleet(self, r: CollectorRegistry) -> None:
        """The fleet as this replica runs it: refused loads, Leases held, stale locations, deletes
        held."""
        self.fleet_load_errors = Counter(
            "secretsync_fleet_load_errors", "Fleet repo loads refused.", registry=r
        )
        self.leader = Gauge(
            "secretsync_leader", "1 while this replica holds the Lease.", ["lease"], registry=r
        )
        self.stale_paths = Gauge(
            "secretsync_stale_paths",
            "Source locations whose last read failed (their objects keep what they hold).",
            ["source"],
            registry=r,
        )
        self.deletes_held = Gauge(
            "secretsync_deletes_held",
            "Deletes kept back by the Fleet's deleteLimit, per cluster, as of the last full cycle.",
            ["cluster"],
            registry=r,
        )
        for source in ("vault", "sops"):
            self.stale_paths.labels(source=source).set(0)

    def _writeback(self, r: CollectorRegistry) -> None:
        """Write-back pushes, and the sealing certificates renewal pushes."""
        self.git_push = Counter(
            "secretsync_git_push",
            "Pushes of write-back commits (rejected: another writer moved the branch).",
            ["result"],
            registry=r,
        )
        self.git_push_duration = Histogram(
            "secretsync_git_push_duration_seconds",
            "From commit to pushed (or given up), retries included.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "secretsync_certificate_expiry_timestamp_seconds",
            "When each sealed cluster's sealing certificate expires (Unix time).",
            ["cluster"],
            registry=r,
        )
        self.git_last_push = Gauge(
            "secretsync_git_last_push_timestamp_seconds",
            "Unix time of the last write-back push that landed.",
            registry=r,
        )

    def _events(self, r: CollectorRegistry) -> None:
        """Kubernetes Events posted."""
        self.events = Counter(
            "secretsync_events",
            "Kubernetes Events: created, patched (a repeat counted), failed (the API server "
            "refused or did not answer), dropped (queue full), limited (rate limit).",
            ["outcome"],
            registry=r,
        )

    def cycle(
        self,
        report: CycleReport | None,
        *,
        outcome: str,
        trigger: str,
        seconds: float,
        full: bool = True,
    ) -> None:
        """Count a cycle. `full`: it read every location in use (not a narrowed cycle), so
        locations it did not read are no longer in use and no longer stale."""
        self.cycles.labels(outcome=outcome, trigger=trigger).inc()
        self.cycle_duration.observe(seconds)
        if report is None:
            return
        per_cluster: dict[str, int] = {}
        for item in report.failures:
            per_cluster[item.cluster] = per_cluster.get(item.cluster, 0) + 1
        for name in report.failed_clusters:
            per_cluster[name] = per_cluster.get(name, 0) + 1
        for name, n in per_cluster.items():
            self.failures.labels(cluster=name).inc(n)
        if report.writes or report.deletes:
            self.writes.inc(report.writes + report.deletes)
        if report.pruned:
            self.deletes_held.clear()
            for name, items in report.held_by_cluster().items():
                self.deletes_held.labels(cluster=name).set(len(items))
        if full:
            self._stale = set(report.read_failed)
        else:
            self._stale -= report.read_ok
            self._stale |= report.read_failed
        per_source = dict.fromkeys(("vault", "sops"), 0)
        for location in self._stale:
            per_source[location.source_key] = per_source.get(location.source_key, 0) + 1
        for source, n in per_source.items():
            self.stale_paths.labels(source=source).set(n)

    def set_objects(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace the gauge's series (clusters that left the fleet disappear)."""
        self.objects.clear()
        for (cluster, state), n in counts.items():
            self.objects.labels(cluster=cluster, state=state).set(n)

    def set_certificate_expiry(self, expiry: Mapping[str, datetime]) -> None:
        """Replace the series: clusters that left the fleet (or sealed delivery) disappear."""
        self.certificate_expiry.clear()
        for cluster, at in expiry.items():
            self.certificate_expiry.labels(cluster=cluster).set(at.timestamp())

    def pushed(self, *, ok: bool, seconds: float) -> None:
        """A cycle's write-back push landed (`ok`) or was given up."""
        self.git_push.labels(result="ok" if ok else "failed").inc()
        self.git_push_duration.observe(seconds)
        if ok:
            self.git_last_push.set_to_current_time()

    def source_logins(self, logins: Mapping[str, int]) -> None:
        """Logins each source has made since it was built (one per identity per token
        lifetime), by source key."""
        for source, n in logins.items():
            self.logins.labels(source=source).set(n)

    def source_read(self, source: str, *, ok: bool) -> None:
        self.source_reads.labels(source=source, outcome="ok" if ok else "error").inc()

    def webhook(self, outcome: str) -> None:
        self.webhooks.labels(outcome=outcome).inc()

    def forward(self, outcome: str) -> None:
        self.webhook_forwards.labels(outcome=outcome).inc()

    def peer_status(self, outcome: str) -> None:
        self.peer_status_fetches.labels(outcome=outcome).inc()

    def dropped(self, reason: str) -> None:
        self.http_dropped.labels(reason=reason).inc()

    def event(self, outcome: str) -> None:
        self.events.labels(outcome=outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

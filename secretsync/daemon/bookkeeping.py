"""What the daemon records of each cycle and each write-back push: the status board, the
metrics, the log and Kubernetes Events. The daemon runs the work; this module only records its
outcome, and never a value (reports carry names, reasons and counts).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from secretsync.core import errors
from secretsync.daemon.metrics import Metrics
from secretsync.daemon.status import StatusBoard
from secretsync.engine.report import CycleReport
from secretsync.kube import events
from secretsync.writeback.push import PushOutcome

# the daemon's logger: cycle lines keep the name they are filtered and read by
log = logging.getLogger("secretsync.daemon.service")


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleRecord:
    """The daemon's record of each cycle: the board, the metrics, log lines and Events."""

    board: StatusBoard
    metrics: Metrics
    events: events.Events

    def failed(self, exc: Exception, *, trigger: str, started: datetime, seconds: float) -> None:
        """A cycle that raised: its reason on the board, counted as an error."""
        message = _reason(exc)
        log.error("cycle (%s) failed: %s", trigger, message)
        self.board.cycle_error(message, started=started, duration_s=seconds, trigger=trigger)
        self.metrics.cycle(None, outcome="error", trigger=trigger, seconds=seconds)

    def finished(
        self,
        report: CycleReport,
        *,
        trigger: str,
        started: datetime,
        seconds: float,
        full: bool,
    ) -> None:
        """A cycle's report: every object's state, the counts, a line per failure and held
        deletes (each an Event too). `full`: the cycle was not narrowed to some paths."""
        summary = self.board.record(report, started=started, duration_s=seconds, trigger=trigger)
        self.metrics.cycle(
            report,
            outcome=summary.outcome,
            trigger=trigger,
            seconds=seconds,
            full=full,
        )
        self.metrics.set_objects(self.board.counts())
        changed = {k: v for k, v in summary.counts.items() if v}
        log.info(
            "cycle (%s) %s in %.2f s: %s",
            trigger,
            summary.outcome,
            seconds,
            ", ".join(f"{n} {k}" for k, n in changed.items()) or "nothing to do",
        )
        for item in report.failures:
            log.warning(
                "failed: %s %s/%s: %s",
                item.cluster,
                item.namespace,
                item.name,
                item.reason,
                extra={"cluster": item.cluster, "fleet_secret": item.fleet_secret},
            )
            self.events.object_failed(item.cluster, item.namespace, item.name, item.reason)
        for name, reason in report.failed_clusters.items():
            log.warning("failed: cluster %s: %s", name, reason, extra={"cluster": name})
            self.events.cluster_failed(name, reason)
        for name, held in self.board.held.items() if report.pruned else ():
            log.warning("%s on %s", held.headline, name, extra={"cluster": name})
            self.events.deletes_held(name, len(held.objects))


@dataclass(frozen=True, slots=True, kw_only=True)
class PushRecord:
    """The daemon's record of each write-back: the push metrics and the status board."""

    board: StatusBoard
    metrics: Metrics

    def rejected(self) -> None:
        self.metrics.git_push.labels(result="rejected").inc()

    def finished(
        self,
        outcome: PushOutcome,
        *,
        carried: Sequence[tuple[str, str | None]],
        seconds: float | None,
    ) -> None:
        if seconds is not None:
            self.metrics.pushed(ok=outcome.result == "ok", seconds=seconds)
        self.board.pushed(outcome.document(), carried=carried, pushed=outcome.result == "ok")


def _reason(exc: Exception) -> str:
    if isinstance(exc, errors.ConfigError):
        return exc.render()
    if isinstance(exc, errors.SecretSyncError):
        return str(exc)
    return f"internal error ({type(exc).__name__})"

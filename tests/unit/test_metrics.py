"""The stale-paths gauge: a full cycle says which locations are stale now; a narrowed cycle
(webhook, poll) changes only the locations it read."""

from __future__ import annotations

from secretsync.core.model import Location
from secretsync.daemon.metrics import Metrics
from secretsync.engine.report import CycleReport

A, B, C = (Location("vault", p, "secret") for p in ("a", "b", "c"))
S = Location("sops", "secrets/prod.yaml")


def stale(metrics: Metrics, source: str = "vault") -> float | None:
    return metrics.registry.get_sample_value("secretsync_stale_paths", {"source": source})


def test_stale_paths_follow_full_and_narrowed_cycles() -> None:
    metrics = Metrics()
    assert stale(metrics) == 0 and stale(metrics, "sops") == 0

    def cycle(ok: set[Location], failed: set[Location], *, full: bool) -> None:
        report = CycleReport(read_ok=frozenset(ok), read_failed=frozenset(failed))
        metrics.cycle(report, outcome="failed", trigger="t", seconds=0.1, full=full)

    cycle({C}, {A, B, S}, full=True)
    assert (stale(metrics), stale(metrics, "sops")) == (2, 1)
    cycle({A}, set(), full=False)  # a webhook for `a`: read again, fine
    assert stale(metrics) == 1
    cycle(set(), {C}, full=False)  # a webhook for `c`: now failing too
    assert stale(metrics) == 2
    cycle({B, C}, set(), full=True)  # `a` and the SOPS file are no longer in use
    assert (stale(metrics), stale(metrics, "sops")) == (0, 0)
    metrics.cycle(None, outcome="error", trigger="t", seconds=0.1)  # no report: no change
    assert stale(metrics) == 0

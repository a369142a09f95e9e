"""The status board fed by real engine cycles (fake source, real Git sink), and the engine's
narrowed cycle that webhooks use (`only_paths`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from secretsync.core import errors
from secretsync.core.model import Location
from secretsync.daemon.status import DRIFT_REASON, State, StatusBoard
from secretsync.engine.report import CycleReport, ItemResult
from secretsync.fleet import load, plan
from tests.support import canary, cycles, fleets
from tests.support.fakes import FakeSource

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"status-test-hmac-key-0123456789"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def cycle(root: Path, source: FakeSource, **kw: Any) -> CycleReport:
    return cycles.render(root, source, key=KEY, cycle=kw)[0]


def loaded_board(root: Path) -> StatusBoard:
    fleet = load.load_fleet(root)
    board = StatusBoard()
    board.fleet_loaded(fleet, plan.plan(fleet), at=T0)
    return board


def states(board: StatusBoard) -> dict[tuple[str, str], str]:
    return {k: e.state.value for k, e in board.entries.items()}


def test_planned_objects_start_pending_with_their_refs(fleet_repo: MakeRepo) -> None:
    board = loaded_board(fleets.write_fleet(fleet_repo))
    assert set(states(board).values()) == {"pending"}
    entry = board.entries[("prod-euw1", "payments-db")]
    assert entry.refs == (
        "vault:secret/payments/eu/db#password",
        "vault:secret/payments/prod/db#username",
    )
    assert entry.delivery == "sealed"
    assert board.document()["totals"]["pending"] == len(board.entries) == 8


def test_a_full_cycle_marks_delivered_objects_synced(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    board = loaded_board(root)
    source = FakeSource(fleets.vault_docs())
    summary = board.record(cycle(root, source), started=T0, duration_s=0.5, trigger="start")
    assert summary.outcome == "ok"
    # Git delivers sealed and external clusters; dev-use1 is direct and no sink here serves it
    for (cluster, _), entry in board.entries.items():
        if cluster == "dev-use1":
            assert entry.state is State.PENDING
        else:
            assert entry.state is State.SYNCED, entry
            assert entry.last_sync == T0
            assert entry.content_hash
            assert entry.sinks == ("git",)
    text = json.dumps(board.document())
    assert not canary.find_in_text(text)
    assert board.document()["lastCycle"]["counts"]["create"] == 7


def test_failure_keeps_last_sync_and_names_the_ref(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    board = loaded_board(root)
    source = FakeSource(fleets.vault_docs())
    board.record(cycle(root, source), started=T0, duration_s=1, trigger="start")
    source.failing["payments/eu/db"] = errors.SourceUnavailable("vault:secret/payments/eu/db: down")
    later = T0 + timedelta(minutes=5)
    summary = board.record(cycle(root, source), started=later, duration_s=1, trigger="interval")
    assert summary.outcome == "failed"
    entry = board.entries[("prod-euw1", "payments-db")]
    assert entry.state is State.FAILED
    assert "payments/eu/db" in entry.reason
    assert entry.last_sync == T0
    assert board.entries[("prod-use1", "payments-db")].state is State.SYNCED
    assert board.entries[("prod-use1", "payments-db")].last_sync == later
    assert board.counts()[("prod-euw1", "failed")] == 1


def test_narrowed_cycle_reads_one_path_and_touches_only_its_objects(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    board = loaded_board(root)
    values = fleets.vault_docs()
    source = FakeSource(values)
    board.record(cycle(root, source), started=T0, duration_s=1, trigger="start")
    before = {p: p.read_bytes() for p in (root / "rendered").rglob("*.yaml")}
    source.documents["web/prod"] = {"token": canary.new("t-prod-rotated")}
    source.reads.clear()
    (root / "secrets" / "db.yaml").unlink()  # a narrowed cycle must not prune what it skips
    report = cycle(root, source, only_paths={"secret/data/web/prod"})
    assert source.reads == [Location("vault", "web/prod", mount="secret")]
    assert {(i.cluster, i.fleet_secret, i.action) for i in report.items} == {
        ("prod-use1", "web-api", "update"),
        ("prod-euw1", "web-api", "update"),
    }
    after = {p: p.read_bytes() for p in (root / "rendered").rglob("*.yaml")}
    assert set(after) == set(before)
    changed = {str(p.relative_to(root / "rendered")) for p in after if after[p] != before[p]}
    assert changed == {"prod-use1/web/api-keys.yaml", "prod-euw1/web/api-keys.yaml"}
    later = T0 + timedelta(seconds=30)
    board.record(report, started=later, duration_s=0.1, trigger="webhook")
    assert board.entries[("prod-use1", "web-api")].last_sync == later
    assert board.entries[("prod-use1", "payments-db")].last_sync == T0


def test_unknown_path_narrows_to_nothing(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    source = FakeSource(fleets.vault_docs())
    report = cycle(root, source, only_paths={"secret/nobody/uses/this"})
    assert report.items == [] and source.reads == []


def test_drift_repair_and_failed_cluster_and_fleet_error(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    board = loaded_board(root)
    report = CycleReport(
        items=[
            ItemResult(
                cluster="prod-use1",
                namespace="web",
                name="api-keys",
                fleet_secret="web-api",
                sink="kube",
                action="update",
                reason=DRIFT_REASON,
                content_hash="abc",
            ),
            ItemResult(
                cluster="prod-use1",
                namespace="web",
                name="api-keys",
                fleet_secret="web-api",
                sink="git",
                action="unchanged",
                content_hash="abc",
            ),
        ],
        failed_clusters={"staging-euw1": "timed out"},
    )
    board.record(report, started=T0, duration_s=60, trigger="interval")
    entry = board.entries[("prod-use1", "web-api")]
    assert entry.state is State.DRIFTED and "changed outside" in entry.reason
    assert entry.sinks == ("git", "kube")
    assert board.entries[("staging-euw1", "web-api")].state is State.FAILED
    assert "timed out" in board.entries[("staging-euw1", "web-api")].reason
    board.fleet_failed("secrets/x.yaml:3: spec: unknown field", at=T0)
    doc = board.document()
    assert doc["fleet"]["error"] == "secrets/x.yaml:3: spec: unknown field"
    assert len(doc["objects"]) == 8  # the last good fleet's inventory stays


def test_objects_leaving_the_fleet_leave_the_board(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    board = loaded_board(root)
    (root / "secrets" / "api.yaml").unlink()
    fleet = load.load_fleet(root)
    board.fleet_loaded(fleet, plan.plan(fleet), at=T0)
    assert {fs for _, fs in board.entries} == {"payments-db"}


def held_report(*, pruned: bool = True) -> CycleReport:
    reason = "delete held: 3 deletes of 8 owned objects are over the delete limit (25%)"
    return CycleReport(
        pruned=pruned,
        items=[
            ItemResult(
                cluster="prod-use1",
                namespace="apps",
                name=f"s{i}",
                fleet_secret=f"s{i}",
                sink="git",
                action="held",
                reason=reason,
            )
            for i in range(3)
        ],
    )


def test_held_deletes_show_on_the_board_the_page_and_the_metric() -> None:
    from secretsync.daemon.fleetpage import render_page
    from secretsync.daemon.metrics import Metrics

    board, metrics = StatusBoard(), Metrics()
    report = held_report()
    summary = board.record(report, started=T0, duration_s=1.0, trigger="interval")
    metrics.cycle(report, outcome=summary.outcome, trigger="interval", seconds=1.0)
    assert summary.outcome == "failed" and summary.counts["held"] == 3
    assert board.document()["deletesHeld"] == {
        "prod-use1": {
            "count": 3,
            "objects": ["apps/s0", "apps/s1", "apps/s2"],
            "reason": report.items[0].reason,
        }
    }
    assert "3 deletes held on prod-use1: over the delete limit." in render_page(board, nonce="n")
    assert b'secretsync_deletes_held{cluster="prod-use1"} 3.0' in metrics.render()
    # a narrowed cycle (a webhook) looks for no deletes: what is held stays held
    narrowed = CycleReport(pruned=False)
    board.record(narrowed, started=T0, duration_s=1.0, trigger="webhook")
    metrics.cycle(narrowed, outcome="ok", trigger="webhook", seconds=1.0, full=False)
    assert board.document()["deletesHeld"]["prod-use1"]["count"] == 3
    assert b'secretsync_deletes_held{cluster="prod-use1"} 3.0' in metrics.render()
    # the next full cycle without held deletes clears them
    board.record(CycleReport(pruned=True), started=T0, duration_s=1.0, trigger="interval")
    metrics.cycle(CycleReport(pruned=True), outcome="ok", trigger="interval", seconds=1.0)
    assert board.document()["deletesHeld"] == {}
    assert b"secretsync_deletes_held{" not in metrics.render()
    assert "deletes held" not in render_page(board, nonce="n")

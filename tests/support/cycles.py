"""One engine cycle as the engine-level tests run it: a fleet repo from `fleet_repo`, a source of
our own (`FakeSource`) and the sinks under test; and the snapshot of a folder a sink wrote.

The real `Engine`, `load_fleet` and sinks run; only the source is ours. Every option of the
engine (`batch_size`, `cluster_timeout_s`, ...) and of `run_cycle` (`dry_run`, `allow_deletes`,
...) is passed through by keyword, so a test shows what it changes from the defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from secretsync.core.model import Fleet
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport
from secretsync.fleet import load
from secretsync.sinks.deliver import Sink
from secretsync.sinks.git.sink import GitSink
from secretsync.sources.resolve import Document
from tests.support.fakes import FakeSource

KEY: Final = b"test-hmac-key-0123456789abcdef"

type Values = FakeSource | Mapping[str, Document]


def engine(values: Values, *sinks: Sink, key: bytes = KEY, **options: Any) -> Engine:
    """The real engine reading `values` (a FakeSource, or its documents by path) as its Vault."""
    source = values if isinstance(values, FakeSource) else FakeSource(values)
    return Engine(
        sources={"vault": source},
        sinks=list(sinks),
        hmac_key=key,
        clock=lambda: datetime.now(UTC),
        **options,
    )


def run(
    fleet: Path | Fleet,
    values: Values,
    *sinks: Sink,
    key: bytes = KEY,
    check: bool = False,
    cycle: Mapping[str, Any] | None = None,
    **options: Any,
) -> CycleReport:
    """One cycle of the fleet (loaded from its repo when given a path) into `sinks`.

    `cycle`: keyword arguments of `Engine.run_cycle`; `options`: of `Engine`. `check` fails the
    test, naming what failed, unless the report is ok."""
    loaded = load.load_fleet(fleet) if isinstance(fleet, Path) else fleet
    report = asyncio.run(
        engine(values, *sinks, key=key, **options).run_cycle(loaded, **(cycle or {}))
    )
    assert report.ok or not check, (report.failures, report.failed_clusters, report.held)
    return report


def render(
    root: Path,
    values: Values,
    *,
    sink: GitSink | None = None,
    key: bytes = KEY,
    check: bool = False,
    cycle: Mapping[str, Any] | None = None,
    **options: Any,
) -> tuple[CycleReport, GitSink]:
    """One cycle of the fleet repo `root` into Git: `root/rendered` through a GitSink with its
    defaults, unless the test brings its own `sink`."""
    git = sink if sink is not None else GitSink(out_dir=root / "rendered")
    return run(root, values, git, key=key, check=check, cycle=cycle, **options), git


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path relative to `folder`, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }

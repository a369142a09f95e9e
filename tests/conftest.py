"""Shared fixtures and the session-wide canary leak scan.

Every log record of the session (all levels, all loggers) is kept in memory; at the end, the
scan fails the run if any canary value appears in a record, in any file under a fleet repo
that a test built with `fleet_repo`, in any answer of a `serve` process (`tests/support/served.py`) or
in the metrics text of any `Metrics` made in the test process.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from secretsync.daemon.metrics import Metrics
from tests.support import canary

pytest_plugins = (
    ["tests.adapters.conftest_kube"]
    if (Path(__file__).parent / "adapters" / "conftest_kube.py").exists()
    else []
)

_records: list[str] = []


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken record is still scanned by its parts
            text = f"{record.msg!r} {record.args!r}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        _records.append(text)


_handler = _Keep(level=logging.DEBUG)
_metrics: list[Metrics] = []


def _track_metrics() -> None:
    """Remember every `Metrics` made in this process: their text is scanned at the end."""
    made = Metrics.__init__

    def init(self: Metrics) -> None:
        made(self)
        _metrics.append(self)

    Metrics.__init__ = init  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG)
    _track_metrics()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks: list[str] = []
    for text in _records:
        for value in canary.find_in_text(text):
            leaks.append(f"log record: {text[:120]!r} holds canary {value[:24]}...")
    outputs = [*canary.OUTPUTS]
    outputs += [("metrics", generate_latest(m.registry).decode()) for m in _metrics]
    for where, text in outputs:
        for value in canary.find_in_text(text):
            leaks.append(f"{where}: holds canary {value[:24]}...")
    for repo in canary.FLEET_REPOS:
        if not repo.exists():
            continue
        for path in repo.rglob("*"):
            if path.is_file() and not path.is_symlink():
                text = path.read_bytes().decode("utf-8", "replace")
                for value in canary.find_in_text(text):
                    leaks.append(f"file {path}: holds canary {value[:24]}...")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"canary scan: {len(canary.ISSUED)} canaries, {len(_records)} log records, "
            f"{len(outputs)} outputs, {len(canary.FLEET_REPOS)} fleet repos, {len(leaks)} leaks"
        )
        for leak in leaks[:50]:
            reporter.write_line(f"LEAK {leak}", red=True)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Every test runs with DEBUG logging so leaks at any level are caught."""
    caplog.set_level(logging.DEBUG)


@pytest.fixture
def fleet_repo(tmp_path: Path) -> Callable[[dict[str, str | bytes]], Path]:
    """Build a fleet repo from {relative path: content}; registered for the leak scan."""
    counter = iter(range(1000))

    def make(files: dict[str, str | bytes]) -> Path:
        root = tmp_path / f"fleet{next(counter)}"
        root.mkdir()
        for rel, content in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(textwrap.dedent(content).lstrip("\n"))
        canary.FLEET_REPOS.append(root)
        return root

    return make

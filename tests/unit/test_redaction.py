"""The log redaction filter: every resolved value is registered as it is resolved, and a record
of any logger that holds one (raw, base64 or JSON-escaped) is written redacted. The registry
keeps one value per ref and forgets refs that left the fleet.

A record that holds a value is only ever made in a child process: in this process every
record is kept for the session's canary scan, which would (rightly) call it a leak.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secretsync.core import logs
from secretsync.core.model import Location, ValueRef
from secretsync.core.values import SecretValue
from secretsync.daemon.service import Daemon
from secretsync.daemon.settings import DaemonSettings
from tests.support import canary, fleets
from tests.support.fakes import FakeSource

MakeRepo = Callable[[dict[str, str | bytes]], Path]
ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import asyncio, base64, json, logging, sys
    sys.path.insert(0, sys.argv[1])
    from secretsync.core import logs
    from secretsync.sources import resolve
    from secretsync.core.model import Location, ValueRef
    from tests.support.fakes import FakeSource

    logs.setup(level="info")  # what every command does first
    value, other = sys.stdin.read().split("\\n")
    ref = ValueRef(Location("vault", "app/db", "secret"), "password")
    source = FakeSource({"app/db": {"password": value}})
    resolution = asyncio.run(resolve.resolve([ref], {"vault": source}))
    assert resolution.values[ref].reveal() == value.encode()
    # libraries that were handed a value: a WARNING through a third-party logger...
    logging.getLogger("urllib3.connectionpool").warning("answer held %s", value)
    logging.getLogger("hvac.adapters").warning("body %s", base64.b64encode(value.encode()).decode())
    logging.getLogger("aiohttp.client").warning("json %s", json.dumps({"v": value}))
    # ...a traceback whose message holds it, and our own logger
    try:
        raise RuntimeError("failed near " + value)
    except RuntimeError:
        logging.getLogger("kubernetes.client.rest").exception("request failed")
    logging.getLogger("secretsync.engine.cycle").error("%s / %s", value, other)
    """
)


def test_a_resolved_value_is_redacted_from_every_logger(tmp_path: Path) -> None:
    """Before: `protect()` was never called, and each of these lines held the value."""
    value = canary.new("redact")
    other = canary.new("unrelated")  # never resolved: not the filter's to know
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSYNC_")}
    done = subprocess.run(
        [sys.executable, str(child), str(ROOT)],
        input=f"{value}\n{other}".encode(),
        capture_output=True,
        timeout=60,
        check=False,
        env=env,
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "WARNING urllib3.connectionpool: answer held <redacted>" in lines
    assert "WARNING hvac.adapters: body <redacted>" in lines
    assert 'WARNING aiohttp.client: json {"v": "<redacted>"}' in lines
    assert "RuntimeError: failed near <redacted>" in lines
    assert f"ERROR secretsync.engine.cycle: <redacted> / {other}" in lines
    for form in (value, base64.b64encode(value.encode()).decode()):
        assert form not in err


@pytest.fixture
def registry() -> Iterator[None]:
    """The process-wide registry, empty for the test (other tests resolve values too) and
    emptied after it."""
    logs.retain(set())
    yield
    logs.retain(set())


def registered() -> set[object]:
    """The refs registered (never their values: an assertion would print them)."""
    return set(logs._REGISTRY.by_ref)


def _ref(i: int) -> ValueRef:
    return ValueRef(Location("vault", f"app/p{i}", "secret"), "v")


def test_one_value_per_ref_and_refs_that_left_are_forgotten(registry: None) -> None:
    first = {_ref(i): f"first-value-{i:04d}" for i in range(1000)}
    logs.protect((ref, SecretValue.of(text)) for ref, text in first.items())
    assert logs.redact("x first-value-0007 y") == "x <redacted> y"
    rotated = {ref: text.replace("first", "second") for ref, text in first.items()}
    logs.protect((ref, SecretValue.of(text)) for ref, text in rotated.items())
    assert len(registered()) == 1000, "a rotation replaces, never adds"
    assert logs.redact("second-value-0007") == "<redacted>"
    kept = {_ref(i) for i in range(10)}
    logs.retain(kept)  # the other 990 FleetSecrets left the fleet
    assert registered() == kept
    assert logs.redact("second-value-0007 second-value-0500") == "<redacted> second-value-0500"


def test_overlapping_and_repeated_values_are_redacted_whole(registry: None) -> None:
    logs.protect(
        [
            (_ref(1), SecretValue.of("abcdef")),
            (_ref(2), SecretValue.of("abcdefghij")),
            (_ref(3), SecretValue.of("ÿÿ")),  # 4 bytes, 2 characters
        ]
    )
    assert logs.redact("abcdefghij abcdef abcdefabcdef ÿÿ abcd") == (
        "<redacted> <redacted> <redacted><redacted> <redacted> abcd"
    )
    escaped = json.dumps("abcdef\n")[1:-1]  # a value with a newline, JSON-escaped in a log line
    logs.protect([(_ref(4), SecretValue.of("abcdef\n"))])
    assert logs.redact(f"got {escaped}!") == "got <redacted>!"


async def test_the_daemon_forgets_values_of_secrets_removed_from_the_fleet(
    fleet_repo: MakeRepo, registry: None
) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    settings = DaemonSettings(
        fleet_path=root, hmac_key=b"redaction-test-key", interval_s=3600, kube=False
    )
    daemon = Daemon(
        settings=settings,
        make_sources=lambda _fleet, _env: {"vault": FakeSource(docs)},  # type: ignore[dict-item]
        clock=lambda: datetime.now(UTC),
    )
    try:
        await daemon.cycle(trigger="start")
        before = {r for r in registered() if isinstance(r, ValueRef)}
        web = {r for r in before if r.location.path.startswith("web/")}
        assert web and before - web, before
        (root / "secrets/api.yaml").unlink()  # the web-api FleetSecret leaves the fleet
        await daemon.cycle(trigger="interval")
        after = registered()
        assert not after & web, "the removed FleetSecret's values are forgotten"
        assert before - web <= after
    finally:
        await daemon._wiring.aclose()
    await asyncio.sleep(0)


tokens = st.text(min_size=4, max_size=40).filter(lambda t: len(t.encode()) >= 4)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(
        st.one_of(tokens, st.from_regex(r"sk_live_[a-z0-9]{2,20}", fullmatch=True)),
        min_size=1,
        max_size=30,
    ),
    before=st.text(max_size=60),
    after=st.text(max_size=60),
    which=st.integers(min_value=0),
)
def test_a_registered_value_anywhere_in_a_text_is_redacted(
    values: list[str], before: str, after: str, which: int
) -> None:
    """Values of every length and alphabet, many with a shared prefix, at any offset of the
    text's UTF-8 bytes: the one embedded is gone; a text holding none is left as it is."""
    registry = logs._Registry()
    registry.protect((_ref(i), SecretValue.of(v)) for i, v in enumerate(values))
    value = values[which % len(values)]
    redacted = registry.needles().redact(before + value + after)
    assert "<redacted>" in redacted
    assert not any(value in piece for piece in redacted.split("<redacted>"))
    plain = "".join(c for c in before + after if all(c not in v for v in values))
    if not any(v in plain for v in values):
        assert registry.needles().redact(plain) == plain

"""P4: the output folder of one cluster cannot be written — read-only, or its file system is
full — while `secretsync render` (a real process) has changes for every cluster.

The tests run as root, where `chmod 0500` blocks nothing, so the folder is made really
read-only (a read-only bind mount) or really full (a 1 MiB tmpfs filled to the last block),
each inside a mount namespace of the render process only (`unshare -m`): nothing on the host
changes. The blocked cluster fails alone (exit 1, named on stderr), its files stay as they were
with no partial or temporary file, and every other cluster's files are updated. The reason
names the folder and the cause.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import canary, cli, cycles

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fleet"
DEMO_KEYS = REPO / "examples" / "demo-keys"
BLOCKED = "prod-use1"


def secretsync(*args: str) -> str:
    return shlex.join(cli.argv("-o", "json", *args))


def run_in_namespace(script: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "SOPS_AGE_KEY_FILE": str(DEMO_KEYS / "age.key"),
        "SECRETSYNC_HMAC_KEY": "readonly-test-key",
        "SECRETSYNC_CACHE_DIR": "",
    }
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
        env=env,
        capture_output=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """The example fleet rendered once, then given a change for every cluster's folder."""
    root = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("rendered"))
    canary.FLEET_REPOS.append(root)
    done = run_in_namespace(secretsync("render", str(root)))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    path = root / "secrets/platform/monitoring.yaml"
    text = path.read_text()
    assert 'cluster: {value: "{{ cluster.name }}"}' in text
    path.write_text(text.replace('"{{ cluster.name }}"}', '"{{ cluster.name }}/v2"}'))
    return root


MONITORING = "monitoring/monitoring-credentials.yaml"


def check(
    root: Path,
    before: dict[str, bytes],
    proc: subprocess.CompletedProcess[bytes],
    blocked_after: dict[str, bytes],
) -> str:
    """The blocked cluster failed alone and kept its files; every other one changed."""
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, err[-2000:]
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and failed[0].startswith(f"failed: cluster {BLOCKED}: "), err[-2000:]
    blocked_before = {
        rel.removeprefix(f"{BLOCKED}/"): data
        for rel, data in before.items()
        if rel.startswith(f"{BLOCKED}/")
    }
    assert blocked_after == blocked_before, "the blocked folder holds what it held, nothing more"
    after = cycles.snapshot(root / "rendered")
    others = {rel.split("/")[0] for rel in before if rel.endswith(MONITORING)} - {BLOCKED}
    assert len(others) >= 3
    for cluster in others:
        rel = f"{cluster}/{MONITORING}"
        assert after[rel] != before[rel], f"{cluster} was not updated"
    summary = json.loads(proc.stdout)["summary"]
    assert summary["updated"] == len(others), summary
    return failed[0]


def read_only_render(fleet: Path) -> tuple[dict[str, bytes], subprocess.CompletedProcess[bytes]]:
    rendered = fleet / "rendered"
    before = cycles.snapshot(rendered)
    folder = shlex.quote(str(rendered / BLOCKED))
    proc = run_in_namespace(
        f"mount --bind {folder} {folder}\nmount -o remount,bind,ro {folder}\n"
        f"{secretsync('render', str(fleet))}"
    )
    return before, proc


def test_read_only_cluster_folder_fails_that_cluster_alone(fleet: Path) -> None:
    before, proc = read_only_render(fleet)
    check(fleet, before, proc, cycles.snapshot(fleet / "rendered" / BLOCKED))


def test_full_file_system_under_a_cluster_folder_fails_that_cluster_alone(
    fleet: Path, tmp_path: Path
) -> None:
    rendered = fleet / "rendered"
    before = cycles.snapshot(rendered)
    folder = shlex.quote(str(rendered / BLOCKED))
    saved = tmp_path / "saved"
    shutil.copytree(rendered / BLOCKED, saved)
    seen = tmp_path / "seen"  # what the full folder held when the render ended
    seen.mkdir()
    proc = run_in_namespace(
        f"mount -t tmpfs -o size=1m tmpfs {folder}\n"
        f"cp -a {shlex.quote(str(saved))}/. {folder}/\n"
        f"dd if=/dev/zero of={folder}/.filler bs=4k 2>/dev/null || true\n"
        f"set +e\n{secretsync('render', str(fleet))}\nrc=$?\nset -e\n"
        f"rm {folder}/.filler\ncp -a {folder}/. {shlex.quote(str(seen))}/\nexit $rc"
    )
    check(fleet, before, proc, cycles.snapshot(seen))


def test_the_reason_names_the_folder_and_the_cause(fleet: Path) -> None:
    before, proc = read_only_render(fleet)
    reason = check(fleet, before, proc, cycles.snapshot(fleet / "rendered" / BLOCKED))
    assert f"rendered/{BLOCKED}" in reason and "Read-only file system" in reason, reason

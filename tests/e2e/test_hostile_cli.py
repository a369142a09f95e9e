"""Hostile fleet repos through the real CLI process (issue 8 "Done when", rows S5 and S8).

A 64 MiB file, a YAML alias bomb, `..` in a file reference, symlinks leaving the repo (a fleet
file, a folder, a SOPS file named as it is or once its template is filled in) and a folder of
more than 20,000 files are each refused by `validate`, `plan`, `render` and `sync` within
seconds, with exit code 2 and the offending file named, and nothing is written.

These repos are built under tmp_path and not registered with `fleet_repo`: they hold no
canary, and the session scan would otherwise read 64 MiB once per issued canary.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fleet"
DEMO_KEYS = REPO / "examples" / "demo-keys"
COMMANDS = [["validate"], ["plan"], ["render"], ["sync", "--dry-run"], ["sync"]]
DEADLINE_S = 10.0  # per process, including interpreter start; the refusal itself is ~ms

ESCAPE_SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: escape}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  target: {name: escape, namespace: web}
  data:
    stolen: {sops: {file: "FILE", key: x}}
"""


def alias_bomb() -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def huge(root: Path, outside: Path) -> str:
    with (root / "clusters/huge.yaml").open("w") as fh:
        block = "# " + "x" * (1024 * 1024 - 3) + "\n"
        for _ in range(64):
            fh.write(block)
    assert (root / "clusters/huge.yaml").stat().st_size == 64 * 1024 * 1024
    return "clusters/huge.yaml"


def bomb(root: Path, outside: Path) -> str:
    (root / "secrets/bomb.yaml").write_text(alias_bomb())
    return "secrets/bomb.yaml"


def bomb_in_fleet_file(root: Path, outside: Path) -> str:
    text = (root / "secretsync.yaml").read_text()
    (root / "secretsync.yaml").write_text(text + "---\n" + alias_bomb())
    return "secretsync.yaml"


def dotdot_sops(root: Path, outside: Path) -> str:
    (root / "secrets/escape.yaml").write_text(ESCAPE_SECRET.replace("FILE", "../outside.yaml"))
    return "secrets/escape.yaml"


def dotdot_cert(root: Path, outside: Path) -> str:
    path = root / "clusters/us-east-1.yaml"
    text = path.read_text()
    assert "certFile: certs/" in text
    path.write_text(text.replace("certFile: certs/", "certFile: ../../certs/", 1))
    return "clusters/us-east-1.yaml"


def symlinked_cluster_file(root: Path, outside: Path) -> str:
    os.symlink(outside, root / "clusters/link.yaml")
    return "clusters/link.yaml"


def symlinked_folder(root: Path, outside: Path) -> str:
    os.symlink(outside.parent, root / "secrets/elsewhere")
    return "secrets/elsewhere"


def symlinked_sops_file(root: Path, outside: Path) -> str:
    os.symlink(outside, root / "sops/link.yaml")
    (root / "secrets/escape.yaml").write_text(ESCAPE_SECRET.replace("FILE", "sops/link.yaml"))
    return "secrets/escape.yaml:8: spec.data.stolen.sops.file: 'sops/link.yaml' resolves outside"


def symlinked_templated_sops_file(root: Path, outside: Path) -> str:
    """Only the filled-in path (`sops/prod/escape.yaml`) is a link: refused at plan time."""
    os.symlink(outside, root / "sops/prod/escape.yaml")
    file = "sops/{{ cluster.labels.env }}/escape.yaml"
    (root / "secrets/escape.yaml").write_text(ESCAPE_SECRET.replace("FILE", file))
    return "secrets/escape.yaml:8: data.stolen.sops.file: cluster 'prod-euw1': sops file"


def too_many_files(root: Path, outside: Path) -> str:
    bulk = root / "secrets/bulk"
    bulk.mkdir()
    for i in range(20_001):  # the loader's MAX_FILES is 20,000 files and folders per folder
        (bulk / f"{i}.txt").touch()
    return "secrets: more than 20000 files and folders under 'secrets'"


CASES: dict[str, tuple[Callable[[Path, Path], str], str]] = {
    "64MiB-file": (huge, "larger than"),
    "alias-bomb": (bomb, "alias bomb"),
    "alias-bomb-in-fleet-file": (bomb_in_fleet_file, "alias bomb"),
    "dotdot-sops-file": (dotdot_sops, "leaves the fleet repo"),
    "dotdot-cert-file": (dotdot_cert, "leaves the fleet repo"),
    "symlinked-cluster-file": (symlinked_cluster_file, "outside the fleet repo"),
    "symlinked-folder": (symlinked_folder, "outside the fleet repo"),
    "symlinked-sops-file": (symlinked_sops_file, "outside the fleet repo"),
    "symlinked-templated-sops-file": (symlinked_templated_sops_file, "outside the fleet repo"),
    "too-many-files": (too_many_files, "more than 20000"),
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_repo_is_refused_quickly_with_exit_2_naming_the_file(
    case: str, tmp_path: Path
) -> None:
    root = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, root, symlinks=True)
    outside = tmp_path / "outside" / "outside.yaml"
    outside.parent.mkdir()
    outside.write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        "metadata: {name: outsider, labels: {env: prod}}\nspec: {delivery: direct}\n"
    )
    make, message = CASES[case]
    named = make(root, outside)
    before = snapshot(root)
    env = {
        **os.environ,
        "SOPS_AGE_KEY_FILE": str(DEMO_KEYS / "age.key"),
        "SECRETSYNC_HMAC_KEY": "hostile-key",
        "SECRETSYNC_LOG_LEVEL": "debug",
        "VAULT_TOKEN": "unused",
    }
    try:
        for command in COMMANDS:
            started = time.monotonic()
            proc = cli.run(*command, str(root), env=env, timeout=DEADLINE_S * 3)
            elapsed = time.monotonic() - started
            err = proc.stderr.decode("utf-8", "replace")
            assert proc.returncode == 2, (command, proc.returncode, err[-1500:])
            assert named in err, (command, err[-1500:])
            assert message in err, (command, err[-1500:])
            assert elapsed < DEADLINE_S, (command, elapsed)
            assert snapshot(root) == before, f"{command} wrote into the fleet repo"
    finally:
        shutil.rmtree(root)

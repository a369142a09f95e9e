"""`secretsync render` killed (SIGKILL) at every file-system change of a pruning run.

The pruning run drops FleetSecrets (one namespace folder empties), changes one, adds one and
loses a cluster from the fleet (its whole folder goes). A first run records, through a Python
audit hook (`sys.addaudithook`: nothing in secretsync knows of it), every change the run
makes to the file system: each open for writing, rename, unlink, mkdir and rmdir. Then for
each of them, a run on a fresh copy of the rendered tree kills itself with SIGKILL just before
that change. After each kill:

- every `kustomization.yaml` parses and every file it names exists (the sink rewrites it
  before unlinking what it no longer names; it used to unlink first);
- every manifest parses (temp files and renames: no half-written file);
- the next run exits 0 and leaves the tree, folders included, byte for byte as an
  uninterrupted run does, with no temp file left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

CLUSTERS = 3
SECRETS = 9
DEADLINE_S = 60.0

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: prune}
spec:
  defaults: {delivery: external}
"""

# run as `python DRIVER KILL_AT EVENTS_FILE secretsync-args...`: KILL_AT < 0 only records
DRIVER = """\
import os, signal, sys

kill_at, events = int(sys.argv[1]), os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir"}
seen = 0


def hook(event, args):
    global seen
    if event == "open":
        if not isinstance(args[2], int) or not args[2] & WRITING:
            return
    elif event not in CHANGES:
        return
    if seen == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    seen += 1
    os.write(events, f"{event} {args[0]}\\n".encode())  # os.write raises no audit event


sys.argv = ["secretsync", *sys.argv[3:]]
sys.addaudithook(hook)
import runpy

runpy.run_module("secretsync", run_name="__main__")
"""


def secret(j: int, *, namespace: str, version: str = "v1") -> str:
    return (
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: s{j:02d}}}\nspec:\n  clusterSelector: {{}}\n"
        f"  target: {{name: s{j:02d}, namespace: {namespace}}}\n  data:\n"
        f'    token: {{vault: {{path: "app/{{{{ cluster.name }}}}/s{j}", key: token}}}}\n'
        f'    where: {{value: "{version}-{{{{ cluster.name }}}}"}}\n'
    )


def write_fleet(root: Path, *, pruned: bool) -> None:
    (root / "clusters").mkdir(parents=True, exist_ok=True)
    (root / "secrets").mkdir(exist_ok=True)
    (root / "secretsync.yaml").write_text(FLEET)
    clusters = CLUSTERS - 1 if pruned else CLUSTERS  # the last one leaves the fleet
    (root / "clusters/all.yaml").write_text(
        "---\n".join(
            f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: c{i}}}\n"
            "spec: {}\n"
            for i in range(clusters)
        )
    )
    docs = []
    for j in range(SECRETS):
        if j % 3 == 0:  # namespace `old` holds only these: pruned, its folder goes too
            if not pruned:
                docs.append(secret(j, namespace="old"))
        else:
            changed = "v2" if pruned and j == 1 else "v1"
            docs.append(secret(j, namespace=f"ns{j % 2}", version=changed))
    if pruned:
        docs.append(secret(SECRETS, namespace="ns0"))  # and one is added
    (root / "secrets/all.yaml").write_text("---\n".join(docs))


def run(
    fleet: Path, *, events: Path, kill_at: int = -1, cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "SECRETSYNC_HMAC_KEY": "crash-prune-key",
        "SECRETSYNC_CACHE_DIR": "",  # no render index: every change is the sink's own
        "PYTHONDONTWRITEBYTECODE": "1",  # and none is the import system's
    }
    return subprocess.run(
        [
            sys.executable,
            str(cwd / "driver.py"),
            str(kill_at),
            str(events),
            "-o",
            "json",
            "render",
            "--allow-deletes",  # it prunes a third of each cluster: over the default limit
            str(fleet),
        ],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=DEADLINE_S,
    )


def tree(out: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `out`."""
    found: dict[str, bytes | None] = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        found[rel] = None if path.is_dir() else path.read_bytes()
    return found


def check_consistent(out: Path, point: str) -> None:
    for kust in out.glob("*/kustomization.yaml"):
        doc = yaml.safe_load(kust.read_bytes())
        assert isinstance(doc, dict), (point, kust)
        for resource in doc["resources"]:
            assert (kust.parent / resource).is_file(), (point, f"{kust} names missing {resource}")
    for path in out.rglob("*.yaml"):
        if not path.name.startswith("."):
            assert isinstance(yaml.safe_load(path.read_bytes()), dict), (point, path)


def test_a_prune_killed_at_every_change_never_names_a_missing_file_and_converges(
    tmp_path: Path,
) -> None:
    (tmp_path / "driver.py").write_text(DRIVER)
    initial = tmp_path / "initial"
    write_fleet(initial, pruned=False)
    first = run(initial, events=tmp_path / "first.events", cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    write_fleet(initial, pruned=True)  # the fleet as the pruning run sees it

    reference = tmp_path / "reference"
    shutil.copytree(initial, reference)
    whole = run(reference, events=tmp_path / "whole.events", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr.decode()[-2000:]
    summary = json.loads(whole.stdout)["summary"]
    assert summary["deleted"] == 3 * CLUSTERS + (SECRETS - 3), summary  # `old`, and all of c2
    assert summary["created"] == CLUSTERS - 1 and summary["updated"] == CLUSTERS - 1, summary
    expected = tree(reference / "rendered")
    assert not any(rel.startswith(f"c{CLUSTERS - 1}") for rel in expected)
    assert not any("/old" in rel for rel in expected)
    changes = (tmp_path / "whole.events").read_text().splitlines()
    kinds = {line.split()[0] for line in changes}
    assert kinds == {"open", "os.rename", "os.remove", "os.rmdir"}, kinds
    assert len(changes) >= 30, changes

    for point, change in enumerate(changes):
        target = tmp_path / f"kill{point}"
        shutil.copytree(initial, target)
        killed = run(target, events=tmp_path / "killed.events", kill_at=point, cwd=tmp_path)
        where = f"killed before change {point}: {change}"
        assert killed.returncode == -9, (where, killed.stderr.decode()[-2000:])
        check_consistent(target / "rendered", where)

        again = run(target, events=tmp_path / "again.events", cwd=tmp_path)
        assert again.returncode == 0, (where, again.stderr.decode()[-2000:])
        assert tree(target / "rendered") == expected, where
        shutil.rmtree(target)

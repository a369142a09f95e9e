"""P2: `secretsync render` killed (SIGKILL) at random points while it writes a large output.

After each kill every manifest under the output parses (the sink stages each file under a
hidden `.tmp` name and renames it into place), nothing left behind is named like a manifest,
and a re-run converges to the tree of an uninterrupted render, byte for byte (external
delivery: no random ciphertext), then a third run changes nothing. The killed run's staged
`.tmp` files are never read, and the re-run removes them (their process is gone).

The kill points are seeded: a fixed random delay after the first output file appears, within
the write time of an uninterrupted render measured first.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.support import cli

CLUSTERS = 8
SECRETS = 150
RUNS = 5
DEADLINE_S = 120.0

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: crash}
spec:
  defaults: {delivery: external}
"""


def build(root: Path) -> None:
    root.mkdir()
    (root / "secretsync.yaml").write_text(FLEET)
    (root / "clusters").mkdir()
    (root / "clusters/all.yaml").write_text(
        "---\n".join(
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: c{i:02d}, labels: {{env: e{i % 3}}}}}\nspec: {{}}\n"
            for i in range(CLUSTERS)
        )
    )
    (root / "secrets").mkdir()
    (root / "secrets/all.yaml").write_text(
        "---\n".join(
            "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
            f"metadata: {{name: s{j:03d}}}\nspec:\n  clusterSelector: {{}}\n"
            f"  target: {{name: s{j:03d}, namespace: ns{j % 7}}}\n  data:\n"
            f'    token: {{vault: {{path: "app/{{{{ cluster.labels.env }}}}/s{j}", key: token}}}}\n'
            '    where: {value: "{{ cluster.name }}"}\n'
            for j in range(SECRETS)
        )
    )


def render(root: Path, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SECRETSYNC_HMAC_KEY": "crash-test-key", "SECRETSYNC_CACHE_DIR": ""}
    return cli.start("-o", "json", "render", str(root), "--out", str(out), env=env)


def manifests(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*.yaml"))
        if p.is_file() and not p.name.startswith(".")
    }


def others(out: Path) -> list[str]:
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and (p.name.startswith(".") or not p.name.endswith(".yaml"))
    )


def first_output(out: Path, proc: subprocess.Popen[bytes]) -> float:
    """Wait (with a deadline) until the first file appears under `out`; when it did."""
    deadline = time.monotonic() + DEADLINE_S
    while not (out.exists() and any(p.is_file() for p in out.rglob("*"))):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert time.monotonic() < deadline, "render wrote nothing"
        time.sleep(0.002)  # poll interval under the deadline above
    return time.monotonic()


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(timeout=DEADLINE_S)
    return proc.returncode, out, err


def test_render_killed_at_random_points_leaves_only_whole_files_and_converges(
    tmp_path: Path,
) -> None:
    root = tmp_path / "fleet"
    build(root)
    reference = tmp_path / "reference"
    proc = render(root, reference)
    began = first_output(reference, proc)
    code, out, err = finish(proc)
    write_s = time.monotonic() - began
    assert code == 0, err.decode()[-2000:]
    assert json.loads(out)["summary"]["created"] == CLUSTERS * SECRETS
    expected = manifests(reference)
    assert len(expected) == CLUSTERS * (SECRETS + 1)
    assert others(reference) == []

    rng = random.Random(8)  # seeded kill points
    partial = 0
    for run in range(RUNS):
        target = tmp_path / f"run{run}"
        proc = render(root, target)
        first_output(target, proc)
        time.sleep(rng.uniform(0, write_s))  # the kill point: not a wait for a condition
        proc.send_signal(signal.SIGKILL)
        finish(proc)
        found = manifests(target)
        for rel, data in found.items():  # whole files only: each parses to its full object
            doc = yaml.safe_load(data)
            assert isinstance(doc, dict), (run, rel)
            assert data == expected[rel] or rel.endswith("kustomization.yaml"), (run, rel)
            if rel.endswith("kustomization.yaml"):
                listed = set(doc["resources"])
                cluster = rel.split("/")[0]
                assert listed <= {r.split("/", 1)[1] for r in expected if r.startswith(cluster)}
        left = others(target)
        assert all(os.path.basename(p).startswith(".") and p.endswith(".tmp") for p in left), left
        partial += 0 < len(found) < len(expected)

        code, out, err = finish(render(root, target))  # the re-run converges
        assert code == 0, (run, err.decode()[-2000:])
        assert manifests(target) == expected, run
        new = sorted(set(others(target)) - set(left))
        assert new == [], ("a whole run leaves nothing of its own", run, new)
        stale = [p for p in others(target) if p.endswith(".tmp")]
        assert stale == [], ("stale temp files stay", run, stale)
        code, out, _ = finish(render(root, target))
        assert code == 0
        assert json.loads(out)["summary"]["filesChanged"] == 0, run
    assert partial >= 1, "no kill landed while the output was being written"

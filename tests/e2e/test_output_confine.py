"""The output tree is confined like the inputs (issue 12, item 3), through the real CLI.

A fleet repo writer can commit symlinks, FIFOs and a `kustomization.yaml` under the output
folder, or point `output.dir` at the fleet's own inputs. Each attack is planted in a rendered
fleet, then `secretsync render` runs as a user types it, with a deadline and an address-space
cap (so a render that reads `/dev/zero` fails fast instead of eating the machine). After each:
nothing outside the output tree changed, byte for byte and link for link, the planted entry is
still there, only the attacked cluster failed and names the path, and the other clusters are
the tree an untouched render writes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_crash_render import CLUSTERS, SECRETS, build
from tests.support import cli

DEADLINE_S = 60.0  # per process; an unconfined render of a FIFO waits for ever
ADDRESS_SPACE = 1 << 30  # a whole render needs a fraction of this; reading /dev/zero does not


def secretsync(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SECRETSYNC_HMAC_KEY": "confine-test-key", "SECRETSYNC_CACHE_DIR": ""}

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    try:
        return cli.run(
            "-o", "json", *args, env=env, timeout=DEADLINE_S, text=True, cwd=cwd, preexec_fn=cap
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"secretsync {' '.join(args)} did not finish within {DEADLINE_S} s (hung)")


def tree(top: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under `top` as (type, content): bytes of files, targets of links; never
    following a link or opening a FIFO."""
    found: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            rel = str(path.relative_to(top))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path).encode())
            elif path.is_dir():
                found[rel] = ("dir", b"")
            elif path.is_file():
                found[rel] = ("file", path.read_bytes())
            else:
                found[rel] = ("other", b"")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, bytes]]]:
    """A fleet rendered once (external delivery: byte-stable), and its output tree."""
    base = tmp_path_factory.mktemp("confine")
    build(base / "fleet")
    done = secretsync("render", "fleet", cwd=base)
    assert done.returncode == 0, done.stderr[-2000:]
    found = tree(base / "fleet/rendered")
    assert len(found) == CLUSTERS * (SECRETS + 1) + CLUSTERS + CLUSTERS * 7  # files, folders
    return base / "fleet", found


Plant = Callable[[Path, Path], str]
"""Plants an attack in the fleet repo (`root`) aimed at `outside`; the output path it names."""


def cluster_folder(root: Path, outside: Path) -> str:
    shutil.rmtree(root / "rendered/c01")
    (root / "rendered/c01").symlink_to(outside)
    return "rendered/c01"


def namespace_folder(root: Path, outside: Path) -> str:
    shutil.rmtree(root / "rendered/c01/ns0")
    (root / "rendered/c01/ns0").symlink_to(outside)
    return "rendered/c01/ns0"


def manifest_file(root: Path, outside: Path) -> str:
    (root / "rendered/c01/ns0/s000.yaml").unlink()
    (root / "rendered/c01/ns0/s000.yaml").symlink_to(outside / "decoy.yaml")
    return "rendered/c01/ns0/s000.yaml"


def kustomization_dev_zero(root: Path, outside: Path) -> str:
    (root / "rendered/c01/kustomization.yaml").unlink()
    (root / "rendered/c01/kustomization.yaml").symlink_to("/dev/zero")
    return "rendered/c01/kustomization.yaml"


def kustomization_fifo(root: Path, outside: Path) -> str:
    (root / "rendered/c01/kustomization.yaml").unlink()
    os.mkfifo(root / "rendered/c01/kustomization.yaml")
    return "rendered/c01/kustomization.yaml"


def manifest_fifo(root: Path, outside: Path) -> str:
    os.mkfifo(root / "rendered/c01/ns0/zz.yaml")
    return "rendered/c01/ns0/zz.yaml"


def removed_cluster(root: Path, outside: Path) -> str:
    """A folder for a cluster the fleet does not have, linked to files that look owned by
    it: pruning it would delete them."""
    (outside / "ns0").mkdir()
    text = (root / "rendered/c00/ns0/s000.yaml").read_text().replace("c00", "c99")
    (outside / "ns0/s000.yaml").write_text(text)
    (outside / "kustomization.yaml").write_text("resources:\n- ns0/s000.yaml\n")
    (root / "rendered/c99").symlink_to(outside)
    return "rendered/c99"


ATTACKS: dict[str, tuple[Plant, str | None]] = {
    # name: (plant, the failure the attacked cluster reports; None: no cluster fails)
    "cluster-folder-symlink": (cluster_folder, "output path is a symlink"),
    "namespace-folder-symlink": (namespace_folder, "output path is a symlink"),
    "manifest-symlink": (manifest_file, "output path is a symlink"),
    "kustomization-to-dev-zero": (kustomization_dev_zero, "output path is a symlink"),
    "kustomization-fifo": (kustomization_fifo, "output path is not a regular file or folder"),
    "manifest-fifo": (manifest_fifo, "output path is not a regular file or folder"),
    "symlinked-folder-of-a-removed-cluster": (removed_cluster, None),
}


def copy_beside_outside(
    source: Path, tmp_path: Path, outside_files: dict[str, str]
) -> tuple[Path, Path]:
    """A copy of the rendered fleet (links kept) at tmp_path/fleet, and beside it the folder
    tmp_path/outside holding `outside_files`, which no render may touch."""
    root = tmp_path / "fleet"
    shutil.copytree(source, root, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, text in outside_files.items():
        (outside / name).write_text(text)
    return root, outside


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_render_never_follows_reads_or_replaces_a_planted_entry(
    attack: str, rendered: tuple[Path, dict[str, tuple[str, bytes]]], tmp_path: Path
) -> None:
    source, expected = rendered
    root, outside = copy_beside_outside(source, tmp_path, {"decoy.yaml": "not secretsync's\n"})
    plant, failure = ATTACKS[attack]
    planted = plant(root, outside)
    before_outside, before_planted = tree(outside), tree(root)[planted]

    done = secretsync("render", "fleet", cwd=tmp_path)

    assert tree(outside) == before_outside, "something outside the output tree changed"
    assert tree(root)[planted] == before_planted, "the planted entry was replaced"
    after = tree(root / "rendered")
    report = json.loads(done.stdout)
    if failure is None:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "failedClusters" not in report
        assert f"fleet/{planted}: output path is a symlink: not followed" in done.stderr
    else:
        assert done.returncode == 1, done.stderr[-2000:]
        assert report["failedClusters"] == {"c01": f"fleet/{planted}: {failure}"}
    for rel, entry in expected.items():  # every other cluster is what a clean render writes
        if not rel.startswith("c01"):
            assert after.get(rel) == entry, rel


def test_kustomization_entries_leaving_the_cluster_folder_are_dropped_unread(
    rendered: tuple[Path, dict[str, tuple[str, bytes]]], tmp_path: Path
) -> None:
    """A foreign `kustomization.yaml` entry is kept only when it names something in the
    cluster folder: `..`, absolute paths and URLs are never opened (an unconfined sink read
    `../../outside/big.yaml` to see whether secretsync owns it, and kept it listed)."""
    source, _ = rendered
    root, outside = copy_beside_outside(source, tmp_path, {"big.yaml": "kind: ConfigMap\n"})
    kust = root / "rendered/c01/kustomization.yaml"
    (root / "rendered/c01/extra.yaml").write_text("kind: ConfigMap\n")  # foreign, inside: kept
    escapes = ["../../../outside/big.yaml", str(outside / "big.yaml"), "/dev/zero"]
    kust.write_text(kust.read_text() + "".join(f"- {e}\n" for e in [*escapes, "extra.yaml"]))

    done = secretsync("render", "fleet", cwd=tmp_path)

    assert done.returncode == 0, done.stderr[-2000:]
    text = kust.read_text()
    assert "- extra.yaml\n" in text
    for escape in escapes:
        assert escape not in text, escape


@pytest.mark.parametrize(
    "out_dir", [".", "clusters", "clusters/rendered", "secrets", "sops", "certs/out", ".git"]
)
def test_an_output_folder_overlapping_the_fleet_inputs_is_bad_input(
    out_dir: str, rendered: tuple[Path, dict[str, tuple[str, bytes]]], tmp_path: Path
) -> None:
    """Rendered into `clusters/` (say), the manifests are read back as fleet files on the next
    run and the fleet no longer loads; inside `sops/` or `certs/` they shadow inputs."""
    source, _ = rendered
    root = tmp_path / "fleet"
    shutil.copytree(source, root, symlinks=True)
    shutil.rmtree(root / "rendered")
    fleet_file = root / "secretsync.yaml"
    fleet_file.write_text(fleet_file.read_text() + f"  output: {{dir: {out_dir}}}\n")
    line = fleet_file.read_text().count("\n")
    before = tree(root)
    for command in (["validate"], ["render"]):
        done = secretsync(*command, "fleet", cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr[-2000:])
        assert f"secretsync.yaml:{line}: spec.output.dir: {out_dir!r} overlaps" in done.stderr
        assert tree(root) == before, "bad input changes nothing"


@pytest.mark.parametrize("linked", ["rendered", "gen"])
def test_a_symlink_on_the_output_folders_path_is_bad_input(
    linked: str, rendered: tuple[Path, dict[str, tuple[str, bytes]]], tmp_path: Path
) -> None:
    """`output.dir` itself, or a folder on its way, linked elsewhere in the repo: the loader
    refuses it (a link leaving the repo was already refused), and the Git sink, which opens
    every folder from the repo down without following a link, never writes through it."""
    source, _ = rendered
    root = tmp_path / "fleet"
    shutil.copytree(source, root, symlinks=True)
    elsewhere = root / "elsewhere"
    (elsewhere / "out").mkdir(parents=True)
    shutil.rmtree(root / "rendered")
    fleet_file = root / "secretsync.yaml"
    out_dir = "rendered" if linked == "rendered" else "gen/out"
    (root / linked).symlink_to("elsewhere/out" if linked == "rendered" else "elsewhere")
    fleet_file.write_text(fleet_file.read_text() + f"  output: {{dir: {out_dir}}}\n")
    line = fleet_file.read_text().count("\n")
    for command in (["validate"], ["render"]):
        done = secretsync(*command, "fleet", cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr[-2000:])
        assert f"secretsync.yaml:{line}: spec.output.dir: {linked!r} is a symlink" in done.stderr
    assert tree(elsewhere) == {"out": ("dir", b"")}

"""The Git sink's stat index: a warm render reads no manifest, and nothing it remembers can
hide a change to a file (an edit that keeps size and mtime, a file swapped in by rename)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from secretsync.core import errors
from secretsync.core.model import (
    ANNOTATION_CLUSTER,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Cluster,
    ObjectKey,
    Observed,
    Origin,
)
from secretsync.delivery.rendered import Rendered
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport
from secretsync.fleet import load
from secretsync.sinks import statindex
from secretsync.sinks.deliver import ChangeSet
from secretsync.sinks.git import files, manifests
from secretsync.sinks.git import sink as git_sink
from secretsync.sinks.git.sink import GitSink
from tests.support import canary, cycles, fleets

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"test-hmac-key-0123456789abcdef"
DB = "prod-use1/payments/db-credentials.yaml"


def run(
    root: Path,
    docs: dict[str, dict[str, object]],
    cache: Path | None,
    *,
    check: bool = True,
    **kw: Any,
) -> tuple[CycleReport, GitSink]:
    sink = GitSink(out_dir=root / "rendered", cache_dir=cache, index=cache is not None)
    return cycles.render(root, docs, sink=sink, key=KEY, check=check, **kw)


def snapshot(root: Path) -> dict[str, bytes]:
    return cycles.snapshot(root / "rendered")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every manifest the sink reads (through the index's fallback or `detail`)."""
    seen: list[str] = []
    real = files._read

    def counting(name: str, *, dir_fd: int) -> tuple[os.stat_result, bytes | None]:
        if name != manifests.KUSTOMIZATION:  # read on every apply, to keep its foreign entries
            seen.append(os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name))
        return real(name, dir_fd=dir_fd)

    monkeypatch.setattr(git_sink, "_read", counting)  # where the sink looks it up
    return seen


def observe_all(root: Path, sink: GitSink) -> dict[ObjectKey, Observed]:
    found: dict[ObjectKey, Observed] = {}
    for cluster in sorted(p.name for p in (root / "rendered").iterdir()):
        found.update(sink._observe(cluster))
    return found


def render_indexed(root: Path, docs: dict[str, dict[str, object]], cache: Path) -> None:
    """Render twice, so that the index holds every file: files written in the clock tick of
    the write's probe are not recorded; the next pass reads (and records) them once the clock
    has moved on."""
    run(root, docs, cache)
    time.sleep(0.05)  # the file system's clock moves on: not a wait for a condition
    run(root, docs, cache)


def test_warm_render_reads_no_manifest_and_changes_nothing(
    fleet_repo: MakeRepo, tmp_path: Path, reads: list[str]
) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cache = tmp_path / "cache"
    render_indexed(root, docs, cache)
    before = snapshot(root)
    reads.clear()
    report, sink = run(root, docs, cache)
    assert reads == [], "every manifest came from the index"
    assert snapshot(root) == before
    assert sink.files_changed == 0 and report.writes == 0 and report.seals == 0
    assert {i.action for i in report.items} == {"unchanged"}
    # and what the index gave is what reading every file gives
    assert observe_all(root, GitSink(out_dir=root / "rendered", cache_dir=cache)) == observe_all(
        root, GitSink(out_dir=root / "rendered", index=False)
    )
    assert not list((root / "rendered").rglob(".*")), "no probe or temp file is left"


def test_hand_edit_keeping_size_and_mtime_is_read_again_and_repaired(
    fleet_repo: MakeRepo, tmp_path: Path, reads: list[str]
) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cache = tmp_path / "cache"
    render_indexed(root, docs, cache)  # every entry recorded and trusted
    path = root / "rendered" / DB
    original = path.read_bytes()
    st = os.stat(path)
    head, sep, rest = original.partition(b"secretsync.dev/content-hash: ")
    assert sep
    forged = head + sep + (b"0" if rest[:1] != b"0" else b"1") + rest[1:]
    assert len(forged) == len(original)
    with open(path, "r+b") as fh:  # in place: same inode, same size
        fh.write(forged)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    now = os.stat(path)
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    reads.clear()
    report, sink = run(root, docs, cache)
    assert str(path) in reads, "the edited file was read, not taken from the index"
    (item,) = [i for i in report.items if i.action != "unchanged"]
    assert (item.cluster, item.namespace, item.name, item.action) == (
        "prod-use1",
        "payments",
        "db-credentials",
        "update",
    )
    assert path.read_bytes() == original, "repaired, keeping every ciphertext"
    assert report.seals == 0 and sink.files_changed == 1


def test_file_swapped_in_by_rename_with_the_same_stat_times_is_read_again(
    fleet_repo: MakeRepo, tmp_path: Path, reads: list[str]
) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cache = tmp_path / "cache"
    render_indexed(root, docs, cache)
    path = root / "rendered" / DB
    original = path.read_bytes()
    st = os.stat(path)
    other = path.with_name(".swap")
    other.write_bytes(original.replace(b"managed-by: secretsync", b"managed-by: someone!"))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    reads.clear()
    report, _ = run(root, docs, cache, check=False)
    assert str(path) in reads
    # no longer secretsync's: a conflict, never overwritten
    (item,) = report.failures
    assert "not managed by secretsync" in item.reason
    assert b"someone!" in path.read_bytes()


def test_a_change_in_the_same_clock_tick_is_never_recorded() -> None:
    index = statindex.ClusterIndex("c", {})
    st = os.stat(__file__)
    index.record("a.yaml", st, None, clock=st.st_ctime_ns)  # the file changed in this tick
    assert index.lookup("a.yaml", st) == (False, None)
    index.record("a.yaml", st, None, clock=st.st_ctime_ns + 1)
    assert index.lookup("a.yaml", st) == (True, None)
    moved = os.stat_result((*st[:8], st.st_mtime, st.st_ctime + 1))  # ctime moved
    assert index.lookup("a.yaml", moved) == (False, None)


def test_the_index_holds_no_value_and_stays_out_of_the_repo(
    fleet_repo: MakeRepo, tmp_path: Path
) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cache = tmp_path / "cache"
    render_indexed(root, docs, cache)
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files
    text = "\n".join(p.read_text() for p in files)
    assert canary.find_in_text(text) == []
    assert not (root / "rendered" / statindex.INDEX_FOLDER).exists()
    # a cache folder inside the output is refused: it would land in Git
    inside = root / "rendered" / ".cache"
    run(root, docs, inside)
    assert not inside.exists()


def test_a_corrupt_or_foreign_index_only_costs_reads(
    fleet_repo: MakeRepo, tmp_path: Path, reads: list[str]
) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cache = tmp_path / "cache"
    render_indexed(root, docs, cache)
    before = snapshot(root)
    indexes = sorted((cache / statindex.INDEX_FOLDER).rglob("*.json"))
    assert indexes
    indexes[0].write_text("{not json")
    doc = json.loads(indexes[1].read_text())
    doc["out"] = "/elsewhere"
    indexes[1].write_text(json.dumps(doc))
    reads.clear()
    report, sink = run(root, docs, cache)
    assert reads, "those clusters were read"
    assert snapshot(root) == before and sink.files_changed == 0
    assert {i.action for i in report.items} == {"unchanged"}


def test_indexes_of_output_folders_that_are_gone_are_pruned(
    fleet_repo: MakeRepo, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    stale = cache / statindex.INDEX_FOLDER / ("0" * 32)
    stale.mkdir(parents=True)
    (stale / "out").write_text(str(tmp_path / "gone") + "\n")
    (stale / "c1.json").write_text("{}")
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    # the first index of this output is saved: the others are looked at
    render_indexed(root, docs, cache)
    assert not stale.exists()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SECRETSYNC_CACHE_DIR", str(tmp_path / "x"))
    assert statindex.default_cache_dir() == tmp_path / "x"
    monkeypatch.setenv("SECRETSYNC_CACHE_DIR", "")
    assert statindex.default_cache_dir() is None
    monkeypatch.delenv("SECRETSYNC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert statindex.default_cache_dir() == tmp_path / "xdg" / "secretsync"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert statindex.default_cache_dir() == tmp_path / "home" / ".cache" / "secretsync"


def test_read_caps_the_size_and_reads_a_file_that_grew(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"x" * (manifests.MAX_MANIFEST_BYTES + 1))
    small = tmp_path / "small.yaml"
    small.write_bytes(b"y" * 200_000)  # more than one chunk
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert files._read("big.yaml", dir_fd=folder)[1] is None
        assert files._read("small.yaml", dir_fd=folder)[1] == b"y" * 200_000
    finally:
        os.close(folder)


def _rendered(name: str, text: str, *, owned: bool = False) -> Rendered:
    """A SealedSecret `name` in namespace `ns` of cluster c1; `owned`: with the label and
    annotation by which secretsync finds what it owns."""
    metadata: dict[str, object] = {"name": name, "namespace": "ns"}
    if owned:
        metadata["labels"] = {LABEL_MANAGED_BY: MANAGED_BY}
        metadata["annotations"] = {ANNOTATION_CLUSTER: "c1"}
    return Rendered(
        key=ObjectKey("c1", "ns", name),
        fleet_secret=name,
        delivery="sealed",
        kind="SealedSecret",
        content_hash=f"hash-{text}",
        key_hashes={},
        manifest={
            "apiVersion": "bitnami.com/v1alpha1",
            "kind": "SealedSecret",
            "metadata": metadata,
            "spec": {"encryptedData": {"k": text}},
        },
        needles=(b"plaintext-value",),
    )


def test_staged_files_are_renamed_by_apply_or_discarded(tmp_path: Path) -> None:
    sink = GitSink(out_dir=tmp_path / "out", index=False)
    cluster = Cluster(name="c1", labels={}, delivery="sealed", origin=Origin("c.yaml", 1))
    a, b, c = _rendered("a", "one"), _rendered("b", "two"), _rendered("c", "three")
    leak = _rendered("d", "plaintext-value")
    for item in (a, b, c, leak):
        sink.stage(cluster, item)
    folder = tmp_path / "out" / "c1" / "ns"
    assert len(list(folder.glob(".*.tmp"))) == 3, "the leaking one is never written"
    newer_b = _rendered("b", "two-newer")  # rendered again: what was staged for b is stale
    result = asyncio.run(sink.apply(cluster, ChangeSet(create=[a, newer_b, leak])))
    assert sorted(k.name for k in result.written) == ["a", "b"]
    assert list(result.failed) == [leak.key]
    assert "two-newer" in (folder / "b.yaml").read_text()
    assert not (folder / "c.yaml").exists(), "staged but not applied: dropped"
    assert list(folder.glob(".*")) == []
    sink.stage(cluster, _rendered("e", "five"))
    sink.discard(cluster)
    assert list(folder.glob(".*")) == [] and not (folder / "e.yaml").exists()


def test_a_clock_probe_or_kustomization_temp_left_by_a_killed_process_is_removed(
    fleet_repo: MakeRepo, tmp_path: Path
) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cache = tmp_path / "cache"
    run(root, docs, cache)
    child = subprocess.Popen(["true"])
    child.wait()  # its pid now names no process
    folder = root / "rendered/prod-use1"
    dead = folder / f"{statindex.PROBE_PREFIX}{child.pid}.tmp"  # its process is gone
    old = folder / f"{statindex.PROBE_PREFIX}{os.getppid()}.tmp"  # a minute old
    live = folder / f"{statindex.PROBE_PREFIX}{os.getppid()}.1.tmp"  # another render's, now
    staged = folder / f".kustomization.yaml.{child.pid}.tmp"  # killed while writing it
    for path in (dead, old, live, staged):
        path.write_bytes(b"")
    os.utime(old, (time.time() - 120, time.time() - 120))
    report, sink = run(root, docs, cache)
    assert not dead.exists() and not old.exists() and not staged.exists()
    assert live.exists(), "not ours to remove"
    assert sink.files_changed == 0 and {i.action for i in report.items} == {"unchanged"}
    live.unlink()


def _many_objects(fleet_repo: MakeRepo, count: int) -> Path:
    """One `external` cluster with `count` FleetSecrets (rendering them reads nothing)."""
    secrets = "---\n".join(
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: s{i:03d}}}\n"
        f"spec:\n  clusterSelector: {{}}\n  target: {{name: s{i:03d}, namespace: ns{i % 3}}}\n"
        f"  data: {{v: {{vault: {{path: p{i}, key: v}}}}}}\n"
        for i in range(count)
    )
    return fleet_repo(
        {
            "secretsync.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\n"
            "metadata: {name: many}\nspec: {defaults: {delivery: external}}\n",
            "clusters/c.yaml": "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            "metadata: {name: c1}\nspec: {}\n",
            "secrets/all.yaml": secrets,
        }
    )


def test_a_gated_git_sink_keeps_every_file_in_its_kustomization(fleet_repo: MakeRepo) -> None:
    """Behind the Lease gate the Git sink still gets a cluster's objects as one batch and
    writes its kustomization once, listing all of them; later cycles change nothing (before:
    batches of 100, the first cycle listed 50, every later one deleted the kustomization)."""
    from secretsync.daemon.sharding import GatedSink

    root = _many_objects(fleet_repo, 150)
    fleet = load.load_fleet(root)
    inner = GitSink(out_dir=root / "rendered", index=False)
    engine = Engine(
        sources={},
        sinks=[GatedSink(inner, allowed=lambda _name: True)],
        hmac_key=KEY,
        clock=lambda: datetime.now(UTC),
    )
    kustomization = root / "rendered/c1/kustomization.yaml"
    changed = []
    for _ in range(3):
        before = inner.files_changed
        report = asyncio.run(engine.run_cycle(fleet))
        assert report.ok, (report.failures, report.failed_clusters)
        changed.append(inner.files_changed - before)
        listed = yaml.safe_load(kustomization.read_text())["resources"]
        assert len(listed) == 150
        assert listed == sorted(f"ns{i % 3}/s{i:03d}.yaml" for i in range(150))
    assert changed == [151, 0, 0]
    assert not inner._paths and not inner._early, "nothing is kept once the cycle is done"


def test_output_folder_swapped_for_a_symlink_after_loading_is_never_written_through(
    tmp_path: Path,
) -> None:
    """The loader refuses a symlinked `output.dir`; one swapped in later (a checkout, another
    process) is refused by the sink itself, which opens every folder from the repo down
    without following a link: each cluster fails naming the path, nothing outside changes."""
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    (repo / "rendered").mkdir(parents=True)
    outside.mkdir()
    sink = GitSink(out_dir=repo / "rendered", repo=repo, index=False)
    cluster = Cluster(name="c1", labels={}, delivery="sealed", origin=Origin("c.yaml", 1))
    assert asyncio.run(sink.observe(cluster)) == {}
    (repo / "rendered").rmdir()
    (repo / "rendered").symlink_to(outside)
    refused = f"{repo / 'rendered'}: output path is a symlink"
    with pytest.raises(errors.DeliveryError, match=refused):
        asyncio.run(sink.observe(cluster))
    with pytest.raises(errors.DeliveryError, match=refused):
        sink.stage(cluster, _rendered("a", "one"))
    with pytest.raises(errors.DeliveryError, match=refused):
        asyncio.run(sink.apply(cluster, ChangeSet(create=[_rendered("b", "two")])))
    assert asyncio.run(sink.orphans(set())) == []
    assert list(outside.iterdir()) == []
    (repo / "rendered").unlink()
    (repo / "rendered").mkdir()
    (repo / "rendered/c1").symlink_to(outside)  # and a cluster folder swapped in after observe
    with pytest.raises(errors.DeliveryError, match="rendered/c1: output path is a symlink"):
        sink.stage(cluster, _rendered("a", "one"))
    with pytest.raises(errors.DeliveryError, match="rendered/c1: output path is a symlink"):
        asyncio.run(sink.apply(cluster, ChangeSet(create=[_rendered("b", "two")])))
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("batches", [1, 2])
def test_a_file_moved_back_to_its_own_name_leaves_the_file_written_at_its_old_name(
    tmp_path: Path, batches: int
) -> None:
    """An owned file renamed by hand (`ns/y.yaml` to `ns/x.yaml`) is written back under its
    own name, and its old file is unlinked when the cluster is finished, after the
    kustomization's rewrite. When object `x` is written at that old name in the same cycle
    (the same batch or a later one), the file is x's and stays (before: unlinked, with the
    kustomization naming it)."""
    out = tmp_path / "out"
    sink = GitSink(out_dir=out, index=False)
    cluster = Cluster(name="c1", labels={}, delivery="sealed", origin=Origin("c.yaml", 1))

    def cycle(*changes: ChangeSet) -> dict[ObjectKey, Observed]:
        observed = dict(asyncio.run(sink.observe(cluster)))
        try:
            for change in changes:
                asyncio.run(sink.apply(cluster, change))
            asyncio.run(sink.finish_cluster(cluster))
        finally:
            sink.discard(cluster)
        return observed

    cycle(ChangeSet(create=[_rendered("y", "one", owned=True)]))
    folder = out / "c1/ns"
    (folder / "y.yaml").rename(folder / "x.yaml")
    y, x = _rendered("y", "two", owned=True), _rendered("x", "three", owned=True)
    if batches == 1:
        found = cycle(ChangeSet(create=[x], update=[y]))
    else:
        found = cycle(ChangeSet(update=[y]), ChangeSet(create=[x]))
    assert list(found) == [y.key], "y was found at x.yaml"
    assert "three" in (folder / "x.yaml").read_text()
    assert "two" in (folder / "y.yaml").read_text()
    listed = yaml.safe_load((out / "c1/kustomization.yaml").read_text())["resources"]
    assert listed == ["ns/x.yaml", "ns/y.yaml"]
    assert set(cycle()) == {x.key, y.key}
    assert not sink._folders, "every folder opened is closed once its cluster is discarded"

"""X3: the temporary files secretsync makes are private (0600), hidden, never named like a
manifest, and gone when the work is done; it makes no temporary folder at all (sops reads the
encrypted bytes on stdin, so no decrypted or encrypted copy is ever written).

Every `tempfile.mkstemp` call is observed while the file exists (its mode read through the
open descriptor), under a umask of 0 so a mode cannot come from the umask.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from secretsync.core.model import Scope
from secretsync.core.values import SecretValue
from secretsync.delivery import seal
from secretsync.engine.cycle import Engine
from secretsync.fleet import load
from secretsync.ops import fleetseal
from secretsync.sinks.git.sink import GitSink
from tests.support import canary, cycles, fleets
from tests.support.fakes import FakeSource

MakeRepo = Callable[[dict[str, str | bytes]], Path]


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[tuple[str, int]]]:
    """(path, mode) of every temp file, seen while it exists: each `tempfile.mkstemp` file
    and each file renamed into place with `os.replace` (both still call the real functions)."""
    made: list[tuple[str, int]] = []
    folders: list[str] = []
    real_mkstemp, real_mkdtemp, real_replace = tempfile.mkstemp, tempfile.mkdtemp, os.replace

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real_mkstemp(*args, **kwargs)
        made.append((path, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd, path

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        path = real_mkdtemp(*args, **kwargs)
        folders.append(path)
        return path

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if not os.fspath(dst).endswith("sealed.yaml"):  # --merge-into: see the test
            folder = kwargs.get("src_dir_fd")  # the Git sink renames within a folder it holds open
            mode = stat.S_IMODE(os.lstat(src, dir_fd=folder).st_mode)
            if folder is not None:
                src = os.path.join(os.readlink(f"/proc/self/fd/{folder}"), src)
            made.append((os.fspath(src), mode))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setenv("SECRETSYNC_CACHE_DIR", str(tmp_path / "cache"))
    old = os.umask(0)
    try:
        yield made
    finally:
        os.umask(old)
    assert folders == [], "secretsync makes no temporary folder"


def render(root: Path, docs: dict[str, dict[str, object]]) -> None:
    cycles.render(root, docs, key=b"tempfile-test-key", check=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and (p.name.startswith(".") or not p.name.endswith(".yaml"))
    )


def test_render_and_merge_temp_files_are_private_and_removed(
    fleet_repo: MakeRepo, observed: list[tuple[str, int]], tmp_path: Path
) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    render(root, docs)  # creates every file
    docs["web/prod"] = {"token": canary.new("tok-temp")}
    render(root, docs)  # updates two of them in place
    fleet = load.load_fleet(root)
    result = fleetseal.seal_for_clusters(
        fleet,
        names=["prod-use1"],
        selector=None,
        namespace="web",
        name="adhoc",
        values={"k": SecretValue.of(canary.new("merge-temp"))},
        scope=Scope.STRICT,
        secret_type="Opaque",
        now=datetime.now(UTC),
    )
    merged = tmp_path / "sealed.yaml"
    merged.write_text("")
    merged.chmod(0o644)
    fleetseal.merge_into(merged, result.manifests, scope=Scope.STRICT)

    rendered = [p for p, _ in observed if str(root / "rendered") in p]
    assert len(rendered) >= 11 + 2, rendered  # 7 manifests, 4 kustomizations, 2 updates
    for path, mode in observed:
        name = os.path.basename(path)
        assert mode == 0o600, (path, oct(mode))
        assert name.startswith(".") and name.endswith(".tmp"), name  # never read as a manifest
        assert not os.path.lexists(path), f"{path} was left behind"
    assert leftovers(root / "rendered") == []
    # the merge's temp file is made 0600 (seen by the mkstemp spy) and takes the merged file's
    # mode once it holds everything, just before the rename
    assert any(os.path.basename(p).startswith(".sealed.yaml.") for p, _ in observed)
    assert stat.S_IMODE(merged.stat().st_mode) == 0o644, "--merge-into keeps the file's mode"
    (doc,) = [d for d in yaml.safe_load_all(merged.read_text()) if d]
    assert seal.unseal_manifest(doc, [fleets.private_key_for("prod-use1")])
    index = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    for path in index:  # the render index lives in a folder of its own that only we can open
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent


def test_every_cache_folder_secretsync_makes_is_private(
    fleet_repo: MakeRepo, observed: list[tuple[str, int]], tmp_path: Path
) -> None:
    root = fleets.write_fleet(fleet_repo)
    render(root, fleets.vault_docs())
    cache = tmp_path / "cache"
    made = [cache, *(p for p in cache.rglob("*") if p.is_dir())]
    assert len(made) >= 2, made
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {
        str(p): "0o700" for p in made
    }
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        str(p): "0o600" for p in files
    }


def test_a_failed_write_removes_its_temp_file(
    fleet_repo: MakeRepo, observed: list[tuple[str, int]]
) -> None:
    """A rename that fails after staging (here: a folder where the manifest goes) fails that
    cluster and leaves no temp file behind."""
    root = fleets.write_fleet(fleet_repo)
    blocker = root / "rendered/prod-use1/web/api-keys.yaml"
    (blocker / "occupied").mkdir(parents=True)
    fleet = load.load_fleet(root)
    engine = Engine(
        sources={"vault": FakeSource(fleets.vault_docs())},
        sinks=[GitSink(out_dir=root / "rendered")],
        hmac_key=b"tempfile-test-key",
        clock=lambda: datetime.now(UTC),
    )
    report = asyncio.run(engine.run_cycle(fleet))
    assert set(report.failed_clusters) == {"prod-use1"}, report.failed_clusters
    assert observed, "files were staged"
    assert [p for p, _ in observed if os.path.lexists(p)] == []
    assert leftovers(root / "rendered") == []

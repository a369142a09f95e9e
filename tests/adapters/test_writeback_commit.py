"""Commits of the output folder (`OutputRepo`) and `render --commit`, in real Git work
trees: one commit of exactly the changed files with the value-free message, no empty commit,
exit 2 (nothing written) when the work tree has changes render did not make, and the plaintext
guard on every staged blob (a refused blob fails its object and is not committed)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml

from secretsync.core.model import Location, ValueRef
from secretsync.core.values import SecretValue
from secretsync.delivery import seal
from secretsync.engine.cycle import Engine
from secretsync.engine.report import CycleReport, ItemResult
from secretsync.fleet import load
from secretsync.sinks.deliver import KeyDiff
from secretsync.sinks.git.sink import GitSink
from secretsync.writeback.commit import Author
from secretsync.writeback.repo import OutputRepo
from tests.support import canary, cli, fleets, keys
from tests.support.fakes import FakeSource
from tests.support.gitremote import GIT_ENV, git, ssh_signing_key

MakeRepo = Callable[[dict[str, str | bytes]], Path]


FLEET = fleets.git_fleet_yaml("commit")


def repo(fleet_repo: MakeRepo, *, mode: str = "blue") -> Path:
    root = fleet_repo(fleets.git_fleet("commit", ["one", "two"], mode=mode))
    git(root, "init", "--quiet", "--initial-branch=main")
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "-m", "fleet")
    return root


def render(root: Path, *extra: str) -> tuple[int, str]:
    result = cli.invoke(
        "-o", "json", "render", str(root), "--commit", *extra,
        env={"SECRETSYNC_HMAC_KEY": "commit-test-hmac", "HOME": str(root.parent)},
    )  # fmt: skip
    return result.exit_code, result.output


def test_render_commit_commits_what_changed_and_nothing_else(fleet_repo: MakeRepo) -> None:
    root = repo(fleet_repo)
    first = git(root, "rev-parse", "HEAD").strip()

    code, out = render(root, "--git-author", "Fleet CI <ci@example.invalid>")
    assert code == 0, out
    head = git(root, "rev-parse", "HEAD").strip()
    assert git(root, "rev-parse", "HEAD^").strip() == first
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    files = git(root, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(files) == [
        "rendered/one/apps/app.yaml",
        "rendered/one/kustomization.yaml",
        "rendered/two/apps/app.yaml",
        "rendered/two/kustomization.yaml",
    ]
    body = git(root, "log", "-1", "--format=%B")
    lines = body.strip().splitlines()
    assert lines[0] == "secretsync: 2 object(s) in 2 cluster(s)"
    assert "one apps/app: created [added: mode]" in lines
    assert "two apps/app: created [added: mode]" in lines
    assert lines[-1].startswith("Secretsync-Cycle: ") and lines[-1].endswith(" render")
    assert git(root, "log", "-1", "--format=%an <%ae>|%cn <%ce>").strip() == (
        "Fleet CI <ci@example.invalid>|Fleet CI <ci@example.invalid>"
    )
    manifest = yaml.safe_load(git(root, "show", "HEAD:rendered/one/apps/app.yaml"))
    assert seal.unseal_manifest(manifest, [keys.rsa_key(0)])["mode"] == b"blue"

    # nothing changed: no commit
    code, out = render(root)
    assert code == 0, out
    assert '"commit": null' in out
    assert git(root, "rev-parse", "HEAD").strip() == head

    # one value changes on one cluster: one file of one object
    (root / "secrets/app.yaml").write_text(
        fleets.mode_secret("blue") + "  overlays:\n"
        "    - clusters: [two]\n      data: {mode: {value: green}}\n"
    )
    git(root, "commit", "--quiet", "--all", "-m", "green on two")
    code, out = render(root)
    assert code == 0, out
    assert git(root, "show", "--name-only", "--format=", "HEAD").split() == [
        "rendered/two/apps/app.yaml"
    ]
    assert git(root, "log", "-1", "--format=%s").strip() == (
        "secretsync: 1 object(s) in 1 cluster(s)"
    )
    assert "two apps/app: updated [changed: mode]" in git(root, "log", "-1", "--format=%B")


def test_render_commit_refuses_a_dirty_work_tree_and_writes_nothing(fleet_repo: MakeRepo) -> None:
    root = repo(fleet_repo)
    assert render(root)[0] == 0
    head = git(root, "rev-parse", "HEAD").strip()
    (root / "secrets/app.yaml").write_text(fleets.mode_secret("red"))
    git(root, "commit", "--quiet", "--all", "-m", "red")
    head = git(root, "rev-parse", "HEAD").strip()

    # a hand edit in the output folder: render did not make it
    edited = root / "rendered/one/apps/app.yaml"
    before = edited.read_bytes()
    edited.write_bytes(before + b"# by hand\n")
    other = root / "rendered/two/apps/app.yaml"
    other_before = other.read_bytes()
    code, out = render(root)
    assert code == 2, out
    assert "rendered: has changes render did not make (rendered/one/apps/app.yaml)" in out
    assert edited.read_bytes() == before + b"# by hand\n"
    assert other.read_bytes() == other_before  # nothing rendered
    assert git(root, "rev-parse", "HEAD").strip() == head
    edited.write_bytes(before)

    # a change outside the output folder is never committed by secretsync
    (root / "notes.txt").write_text("draft\n")
    code, out = render(root)
    assert code == 2, out
    assert "changes outside the output folder rendered/ (notes.txt)" in out
    assert other.read_bytes() == other_before
    assert git(root, "rev-parse", "HEAD").strip() == head
    (root / "notes.txt").unlink()

    code, out = render(root, "--git-author", "no email")
    assert code == 2 and "--git-author" in out


def item(cluster: str, name: str, action: str = "create") -> ItemResult:
    return ItemResult(
        cluster=cluster,
        namespace="apps",
        name=name,
        fleet_secret=name,
        sink="git",
        action=action,
        keys=KeyDiff(added=("token",)),
        version_changes=("secret/apps/token: 3 -> 4",),
    )


async def test_the_guard_refuses_a_staged_blob_with_a_value(fleet_repo: MakeRepo) -> None:
    root = repo(fleet_repo)
    value = canary.new("guard")
    leaky = root / "rendered/one/apps/leaky.yaml"
    fine = root / "rendered/one/apps/fine.yaml"
    leaky.parent.mkdir(parents=True)
    leaky.write_text(f"kind: Secret\nstringData: {{token: {value}}}\n")
    fine.write_text("kind: SealedSecret\nspec: {encryptedData: {token: AgB}}\n")
    ref = ValueRef(Location("vault", "apps/token", mount="secret"), "token")
    report = CycleReport(
        items=[item("one", "leaky"), item("one", "fine")], guarded={ref: SecretValue.of(value)}
    )
    out = await OutputRepo.open(
        out_dir=root / "rendered", author=Author.parse("t <t@example.invalid>")
    )
    commit = await out.commit(report, cycle="test")
    assert commit is not None
    assert commit.paths == ("rendered/one/apps/fine.yaml",)
    assert [i.name for i in commit.items] == ["fine"]
    assert report.items[0].action == "failed"
    assert "refused to write a resolved secret value" in report.items[0].reason
    assert not leaky.exists()  # a new file is removed, a changed one put back as it was
    history = git(root, "log", "-p", "--all")
    assert value not in history
    assert "rendered/one/apps/leaky.yaml" not in history
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert commit.message.splitlines()[2:4] == [
        "one apps/fine: created [added: token]",
        "  secret/apps/token: 3 -> 4",
    ]

    # only the refused object changed: no commit at all
    leaky.write_text(f"token: {value}\n")
    report = CycleReport(items=[item("one", "leaky")], guarded={ref: SecretValue.of(value)})
    assert await out.commit(report, cycle="test") is None
    assert not leaky.exists()


async def test_the_guard_checks_each_object_for_its_own_values(fleet_repo: MakeRepo) -> None:
    """Rendered by the engine from a source of our own; one file then holds its value anyway
    (as if the sink's guard had been bypassed): that object fails, the other is committed."""
    root = repo(fleet_repo)
    (root / "secretsync.yaml").write_text(
        FLEET.replace(
            "spec: {output: {dir: rendered}}",
            "spec: {output: {dir: rendered}, sources: {vault: {address: 'http://127.0.0.1:9'}}}",
        )
    )
    (root / "secrets/app.yaml").write_text(
        fleets.mode_secret("x").replace(
            '{mode: {value: "x"}}', "{token: {vault: {path: apps/token, key: token}}}"
        )
    )
    git(root, "commit", "--quiet", "--all", "-m", "vault")
    value = canary.new("own")
    source = FakeSource({"apps/token": {"token": value}})
    engine = Engine(
        sources={"vault": source},
        sinks=[GitSink(out_dir=root / "rendered", index=False)],
        hmac_key=b"guard-per-object",
        clock=lambda: datetime.now(UTC),
        seal_workers=0,
    )
    report = await engine.run_cycle(load.load_fleet(root))
    assert report.ok and len(report.guarded) == 1
    leaky = root / "rendered/two/apps/app.yaml"
    leaky.write_text(leaky.read_text() + f"# {value}\n")
    out = await OutputRepo.open(
        out_dir=root / "rendered", author=Author.parse("t <t@example.invalid>")
    )
    commit = await out.commit(report, cycle="test")
    assert commit is not None
    assert sorted(commit.paths) == [
        "rendered/one/apps/app.yaml",
        "rendered/one/kustomization.yaml",
        "rendered/two/kustomization.yaml",
    ]
    failed = [i for i in report.items if i.action == "failed"]
    assert [(i.cluster, i.name) for i in failed] == [("two", "app")]
    assert not leaky.exists()
    assert value not in git(root, "log", "-p", "--all")


def test_render_commit_signs_with_an_ssh_key(fleet_repo: MakeRepo, tmp_path: Path) -> None:
    root = repo(fleet_repo)
    key = ssh_signing_key(tmp_path / "signing", comment="ci")
    code, out = render(root, "--git-signing-key", str(key))
    assert code == 0, out
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"ci@example.invalid {(tmp_path / 'signing.pub').read_text()}")
    verified = subprocess.run(
        ["git", "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", "HEAD"],
        cwd=root,
        env=GIT_ENV,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr.decode()
    assert b'Good "git" signature for ci@example.invalid' in verified.stderr
    result = cli.invoke("render", str(root), "--git-signing-key", str(key))
    assert result.exit_code == 2 and "give --commit too" in result.output

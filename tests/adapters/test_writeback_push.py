"""`serve --git-url URL --git-push` in process, against real remotes (a bare repository over
file://, and over smart HTTP with basic auth from a .git-credentials file): one commit per cycle
that changed files, none for a cycle that did not; a racing writer (a pre-receive hook that
moves the branch) makes the push rejected, the daemon renders again on the new head and pushes
on top of the other commit; a remote that keeps moving fails the cycle's push after 5 tries
(status, metrics) while /readyz stays ready; a push branch of its own; a lost Lease pushes
nothing."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from secretsync.app import wiring
from secretsync.daemon.service import Daemon
from secretsync.delivery import seal
from secretsync.fleet import gitsource
from secretsync.writeback.commit import Author
from secretsync.writeback.push import PushSettings
from tests.support import canary, fleets, keys
from tests.support.gitremote import (
    GIT_ENV,
    BareRemote,
    git,
    git_daemon,
    http_url,
    smart_http,
    ssh_signing_key,
)

RENDERED = "rendered/one/apps/app.yaml"


def fleet_files(mode: str) -> dict[str, str | bytes]:
    return fleets.git_fleet("push", ["one"], mode=mode)


def make_daemon(
    checkout: Path,
    url: str,
    *,
    branch: str | None = None,
    credentials: Path | None = None,
    signing_key: Path | None = None,
) -> Daemon:
    push = PushSettings(
        branch=branch,
        author=Author.parse("Fleet Bot <bot@example.invalid>"),
        backoff_s=0.01,
        signing_key=signing_key,
    )
    canary.FLEET_REPOS.append(checkout)
    return git_daemon(
        checkout, url, hmac_key=b"push-test-hmac", git_credentials_file=credentials, push=push
    )


async def start_and_close(daemon: Daemon) -> None:
    """The daemon's start cycle, then its clients closed, as a process that stops after it."""
    try:
        await daemon.cycle(trigger="start")
    finally:
        await daemon._wiring.aclose()


def mode_at(remote: BareRemote, rev: str) -> bytes:
    manifest = yaml.safe_load(remote.show(rev, RENDERED))
    return seal.unseal_manifest(manifest, [keys.rsa_key(0)])["mode"]


def pushes(daemon: Daemon) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(daemon.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "secretsync_git_push_total":
                out[sample.labels["result"]] = sample.value
    return out


async def test_one_commit_per_changing_cycle_and_a_racing_writer_is_kept(tmp_path: Path) -> None:
    remote = BareRemote(tmp_path)
    fleet = remote.commit(fleet_files("blue"), "fleet")
    daemon = make_daemon(tmp_path / "checkout", remote.url)
    try:
        await daemon.cycle(trigger="start")
        head = remote.head()
        assert head is not None and head != fleet
        assert remote.log("-1", "--format=%P").strip() == fleet
        assert remote.log("-1", "--format=%s|%an <%ae>").strip() == (
            "secretsync: 1 object(s) in 1 cluster(s)|Fleet Bot <bot@example.invalid>"
        )
        assert mode_at(remote, head) == b"blue"
        status = daemon.board.document()
        assert status["lastPush"]["result"] == "ok"
        assert status["lastPush"]["commit"] == head
        [entry] = status["objects"]
        assert (entry["committed"], entry["pushed"]) == (head, True)
        assert pushes(daemon) == {"ok": 1.0}

        # nothing changed: no commit
        await daemon.cycle(trigger="interval")
        assert remote.head() == head
        assert pushes(daemon) == {"ok": 1.0}

        # another writer moves main while our push is received: rejected, rendered again on
        # the new head, pushed on top of it
        remote.commit({"secrets/app.yaml": fleets.mode_secret("green")}, "green")
        remote.race(times=1)
        await daemon.cycle(trigger="interval")
        [racer] = remote.racer_commits()
        final = remote.head()
        assert final is not None
        assert remote.is_ancestor(racer, final)
        assert remote.log("-1", "--format=%P", final).strip() == racer
        assert mode_at(remote, final) == b"green"
        assert pushes(daemon) == {"ok": 2.0, "rejected": 1.0}
        assert daemon.board.document()["lastPush"]["tries"] == 2
        # one commit of ours since the author's: the rejected one never reached the remote
        ours = remote.log("--format=%an", f"{head}..{final}").split()
        assert ours.count("Fleet") == 1 and ours.count("author") == 1
    finally:
        await daemon._wiring.aclose()


async def test_a_branch_that_keeps_moving_fails_the_push_after_five_tries(tmp_path: Path) -> None:
    remote = BareRemote(tmp_path)
    remote.commit(fleet_files("blue"), "fleet")
    daemon = make_daemon(tmp_path / "checkout", remote.url)
    try:
        await daemon.cycle(trigger="start")
        remote.commit({"secrets/app.yaml": fleets.mode_secret("red")}, "red")
        remote.race(times=0)  # every push
        await daemon.cycle(trigger="interval")
        assert len(remote.racer_commits()) == 5
        last = daemon.board.document()["lastPush"]
        assert (last["result"], last["tries"]) == ("failed", 5)
        assert "rejected" in last["reason"]
        assert daemon.board.document()["objects"][0]["pushed"] is False
        assert pushes(daemon) == {"ok": 1.0, "rejected": 5.0, "failed": 1.0}
        assert daemon.readiness().ready
        assert mode_at(remote, "main") == b"blue"  # others' commits kept, ours not forced

        # the next cycle (a full one) tries again and lands
        remote.no_hooks()
        await daemon.cycle(trigger="interval")
        assert mode_at(remote, "main") == b"red"
        assert daemon.board.document()["lastPush"]["result"] == "ok"
    finally:
        await daemon._wiring.aclose()


async def test_push_branch_of_its_own_over_smart_http_with_basic_auth(tmp_path: Path) -> None:
    remote = BareRemote(tmp_path)
    fleet = remote.commit(fleet_files("blue"), "fleet")
    token = canary.new("git-token")
    credentials = tmp_path / "git-credentials"
    with smart_http(remote, user="bot", token=token) as server:
        url = http_url(server, remote)
        host = url.split("/")[2]
        credentials.write_text(f"http://bot:{token}@{host}\n")
        daemon = make_daemon(tmp_path / "checkout", url, branch="rendered", credentials=credentials)
        try:
            await daemon.cycle(trigger="start")
            first = remote.head("rendered")
            assert first is not None
            assert remote.head() == fleet  # the fleet branch is never written
            assert remote.log("--format=%s", "rendered").splitlines() == [
                "secretsync: 1 object(s) in 1 cluster(s)"
            ]
            tree = git(remote.bare, "ls-tree", "--name-only", "rendered").split()
            assert tree == ["rendered"]  # only the output folder
            assert mode_at(remote, "rendered") == b"blue"
            assert any(r.startswith("POST /fleet.git/git-receive-pack") for r in server.requests)

            # unchanged: the folder starts from the push branch, so nothing is re-sealed, also
            # in a fresh working folder (a new pod)
            await daemon.cycle(trigger="interval")
            assert remote.head("rendered") == first
            await daemon._wiring.aclose()
            daemon = make_daemon(
                tmp_path / "fresh", url, branch="rendered", credentials=credentials
            )
            await daemon.cycle(trigger="start")
            assert remote.head("rendered") == first

            remote.commit({"secrets/app.yaml": fleets.mode_secret("green")}, "green")
            await daemon.cycle(trigger="interval")
            second = remote.head("rendered")
            assert second is not None and second != first
            assert remote.log("-1", "--format=%P", "rendered").strip() == first
            assert remote.log("-1", "--name-only", "--format=", "rendered").split() == [RENDERED]
            assert mode_at(remote, "rendered") == b"green"

            # the working folder's output drifted (a hand edit, a stray file): laid over from
            # the push branch again, nothing to commit
            checkout = daemon.settings.fleet_path
            (checkout / RENDERED).write_text("edited by hand\n")
            (checkout / "rendered/one/apps/stray.yaml").write_text("kind: Stray\n")
            await daemon.cycle(trigger="interval")
            assert remote.head("rendered") == second
            assert (checkout / RENDERED).read_text() == remote.show("rendered", RENDERED)
            assert not (checkout / "rendered/one/apps/stray.yaml").exists()

            # a wrong token: the push fails, named without the token, and nothing is forced
            credentials.write_text(f"http://bot:wrong-{token}@{host}\n")
            remote.commit({"secrets/app.yaml": fleets.mode_secret("red")}, "red")
            refused_before = server.refused
            await daemon.cycle(trigger="interval")
            error = daemon.board.fleet_error or ""
            assert error.startswith("git fetch failed"), error
            assert server.refused > refused_before
            assert remote.head("rendered") == second
            assert token not in str(daemon.board.document())
        finally:
            await daemon._wiring.aclose()


async def test_a_replica_without_the_git_lease_commits_and_pushes_nothing(tmp_path: Path) -> None:
    remote = BareRemote(tmp_path)
    fleet = remote.commit(fleet_files("blue"), "fleet")
    daemon = make_daemon(tmp_path / "checkout", remote.url)
    assert daemon.writeback is not None
    checks: list[bool] = []

    def lost_after_commit() -> bool:
        """Holds the Lease when the cycle starts and when it commits, loses it before the push."""
        checks.append(True)
        return len(checks) <= 1

    daemon.writeback.may_write = lost_after_commit
    try:
        await daemon.cycle(trigger="start")
        assert remote.head() == fleet
        last = daemon.board.document()["lastPush"]
        assert last["result"] == "skipped"
        assert "Lease" in last["reason"]
        assert pushes(daemon) == {}
    finally:
        await daemon._wiring.aclose()


async def test_a_render_left_uncommitted_lands_as_one_commit(tmp_path: Path) -> None:
    """The state a crash between render and commit leaves: rendered files in the working
    folder, no commit. The next start resets to the remote and lands it as one commit."""
    remote = BareRemote(tmp_path)
    remote.commit(fleet_files("blue"), "fleet")
    checkout = tmp_path / "checkout"
    daemon = make_daemon(checkout, remote.url)
    await start_and_close(daemon)
    pushed = remote.head()
    remote.commit({"secrets/app.yaml": fleets.mode_secret("green")}, "green")
    fleet = remote.head()
    crashed = Daemon(
        settings=dataclasses.replace(daemon.settings, push=None), make_sources=wiring.build_sources
    )
    await start_and_close(crashed)  # renders green, commits nothing
    assert git(checkout, "status", "--porcelain").split() == ["M", RENDERED]
    assert remote.head() == fleet

    restarted = make_daemon(checkout, remote.url)
    await start_and_close(restarted)
    final = remote.head()
    assert final is not None
    assert remote.log("--format=%ae", f"{fleet}..{final}").split() == ["bot@example.invalid"]
    assert mode_at(remote, final) == b"green"
    assert remote.is_ancestor(str(pushed), final)


async def test_pushed_commits_are_signed_with_the_ssh_key(tmp_path: Path) -> None:
    remote = BareRemote(tmp_path)
    remote.commit(fleet_files("blue"), "fleet")
    key = ssh_signing_key(tmp_path / "signing", comment="bot")
    daemon = make_daemon(tmp_path / "checkout", remote.url, signing_key=key)
    await start_and_close(daemon)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"bot@example.invalid {(tmp_path / 'signing.pub').read_text()}")
    verified = subprocess.run(
        ["git", "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", "main"],
        cwd=remote.bare,
        env=GIT_ENV,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr.decode()


async def test_a_failed_render_on_the_new_head_fails_the_push(tmp_path: Path) -> None:
    remote = BareRemote(tmp_path)
    remote.commit(fleet_files("blue"), "fleet")
    daemon = make_daemon(tmp_path / "checkout", remote.url)
    assert daemon.writeback is not None
    try:
        await daemon.cycle(trigger="start")
        remote.commit({"secrets/app.yaml": fleets.mode_secret("red")}, "red")
        remote.race(times=0)
        report = await daemon._reconcile("interval", None)
        assert report is not None

        async def unreachable() -> None:
            raise gitsource.GitError("git fetch failed (128): the remote went away")

        await daemon.writeback.publish(
            report,
            out_dir=lambda: tmp_path / "checkout" / "rendered",
            rerun=unreachable,
            trigger="interval",
        )
        last = daemon.board.document()["lastPush"]
        assert (last["result"], last["tries"]) == ("failed", 1)
        assert (
            last["reason"]
            == "rendering on the new head: git fetch failed (128): the remote went away"
        )
        assert daemon.writeback.failed
        assert pushes(daemon)["failed"] == 1.0
    finally:
        await daemon._wiring.aclose()

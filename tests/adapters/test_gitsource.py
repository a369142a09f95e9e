"""The fleet repo pulled from a Git URL by the daemon itself (`gitsource`), against a bare
repository made in the test (file:// URL) and the real engine rendering into the checkout:
a good commit is delivered, a bad one is refused while the last good one keeps running (and
stays in the working folder), a fixed one is delivered. Also the credential helper, through
`git credential fill`, and the refusal of URLs that carry credentials."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
import yaml

from secretsync.core import errors
from secretsync.daemon.service import Daemon
from secretsync.delivery import seal
from secretsync.fleet import gitsource
from tests.support import canary, cli, fleets, gitremote, keys
from tests.support.gitremote import GIT_ENV, BareRemote

FLEET = fleets.git_fleet_yaml("from-git")


def git(*args: str, cwd: Path) -> str:
    return gitremote.git(cwd, *args).strip()


def mode_in(checkout: Path) -> bytes | None:
    path = checkout / "rendered" / "sealed-one" / "apps" / "app-config.yaml"
    if not path.exists():
        return None
    return seal.unseal_manifest(yaml.safe_load(path.read_text()), [keys.rsa_key(0)])["mode"]


def make_daemon(checkout: Path, url: str) -> Daemon:
    return gitremote.git_daemon(checkout, url, hmac_key=b"git-source-test-hmac")


async def test_good_commit_runs_bad_commit_is_refused_fixed_commit_runs(tmp_path: Path) -> None:
    remote = BareRemote(tmp_path)
    good = remote.commit(
        fleets.git_fleet("from-git", ["sealed-one"], mode="blue-1", object_name="app-config"),
        "good",
    )
    checkout = tmp_path / "checkout"
    daemon = make_daemon(checkout, remote.url)
    try:
        await daemon.cycle(trigger="start")
        assert mode_in(checkout) == b"blue-1"
        assert daemon.board.commit == good
        assert daemon.board.fleet_error is None

        # a bad commit: a new value and a file that does not load; nothing of it runs
        bad = remote.commit(
            {
                "secrets/app.yaml": fleets.mode_secret("blue-2", name="app-config"),
                "secrets/broken.yaml": "kind: FleetSecret\nspec: [not, a, mapping\n",
            },
            "bad",
        )
        await daemon.cycle(trigger="interval")
        assert mode_in(checkout) == b"blue-1"
        status = daemon.board.document()["fleet"]
        assert status["commit"] == good
        assert status["refusedCommit"] == bad
        assert status["error"].startswith(f"commit {bad} refused: ")
        assert "broken.yaml" in status["error"]
        assert git("rev-parse", "HEAD", cwd=checkout) == good  # the folder holds what runs
        assert not (checkout / "secrets" / "broken.yaml").exists()
        assert daemon.readiness().checks["fleet"] == "loaded (the newest commit was refused)"
        last = daemon.board.last_cycle
        assert last is not None and last.outcome == "ok"  # the last good fleet still ran

        # refused again on the next cycle; the folder is back at the good commit after it
        await daemon.cycle(trigger="interval")
        assert git("rev-parse", "HEAD", cwd=checkout) == good
        assert daemon.board.refused_commit == bad

        fixed = remote.commit({"secrets/broken.yaml": None}, "fixed")
        await daemon.cycle(trigger="interval")
        assert mode_in(checkout) == b"blue-2"
        assert daemon.board.commit == fixed
        assert daemon.board.fleet_error is None
        assert daemon.board.refused_commit is None

        # the remote goes away: an error on the board, the last good commit keeps running
        remote.bare.rename(tmp_path / "gone.git")
        await daemon.cycle(trigger="interval")
        assert daemon.board.commit == fixed
        assert daemon.board.fleet_error is not None
        assert daemon.board.fleet_error.startswith("git fetch failed")
        assert mode_in(checkout) == b"blue-2"
    finally:
        await daemon._wiring.aclose()


async def test_a_missing_branch_fails_before_any_fleet_loads(tmp_path: Path) -> None:
    remote = BareRemote(tmp_path)
    remote.commit({"secretsync.yaml": FLEET}, "first")
    checkout = tmp_path / "checkout"
    box = gitsource.GitCheckout(
        url=remote.url, branch="no-such-branch", folder=checkout, timeout_s=30
    )
    with pytest.raises(gitsource.GitError, match="git fetch failed"):
        await box.pull()
    assert box.good is None
    assert not (checkout / "secretsync.yaml").exists()


@pytest.mark.parametrize(
    "url",
    ["https://user:tok@git.example.invalid/fleet.git", "https://tok@git.example.invalid/f"],
)
def test_urls_with_credentials_are_refused(url: str) -> None:
    with pytest.raises(errors.ConfigError, match="must not carry credentials"):
        gitsource.check_url(url)


def test_branch_names_are_checked() -> None:
    assert gitsource.check_branch("release/2024-01") == "release/2024-01"
    for bad in ("--upload-pack=x", "a..b", "", "has space"):
        with pytest.raises(errors.ConfigError):
            gitsource.check_branch(bad)


def test_credential_helper_answers_get_from_the_file_through_git(tmp_path: Path) -> None:
    token = canary.new("git-token")
    creds = tmp_path / "git-credentials"
    creds.write_text(
        f"https://other:nope@elsewhere.example.invalid\nhttps://robot:{token}@git.example.invalid\n"
    )
    before = creds.read_bytes()
    helper = gitsource.credential_helper(creds)
    assert token not in helper
    asked = "protocol=https\nhost=git.example.invalid\npath=team/fleet.git\n\n"
    done = subprocess.run(
        ["git", "-c", "credential.helper=", "-c", f"credential.helper={helper}",
         "credential", "fill"],
        input=asked.encode(),
        env=GIT_ENV,
        capture_output=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    answer = dict(line.split("=", 1) for line in done.stdout.decode().splitlines())
    assert answer["username"] == "robot"
    assert answer["password"] == token
    # git's `erase` (after a refused login) and `store` leave the file as it was
    for action in ("erase", "store"):
        code = gitsource.credential_main(
            ["credential", str(creds), action], io.StringIO(asked), io.StringIO()
        )
        assert code == 0
    assert creds.read_bytes() == before
    # no matching host: no answer, so git fails instead of prompting
    out = io.StringIO()
    gitsource.credential_main(
        ["credential", str(creds), "get"],
        io.StringIO("protocol=https\nhost=unknown.example.invalid\n\n"),
        out,
    )
    assert out.getvalue() == ""


def test_serve_refuses_git_options_it_cannot_use(tmp_path: Path) -> None:
    token = canary.new("url-token")
    cases = [
        (["--git-branch", "main"], "need --git-url"),
        (["--git-url", f"https://robot:{token}@git.example.invalid/f.git"], "credentials"),
        (["--git-url", "file:///nowhere", "--git-branch", "a..b"], "not a usable branch"),
    ]
    for extra, expected in cases:
        done = cli.invoke(
            "serve",
            str(tmp_path / "checkout"),
            "--no-kube",
            *extra,
            env={"SECRETSYNC_HMAC_KEY": "k"},
        )
        assert done.exit_code == 2, done.output
        assert expected in done.output
        assert token not in done.output

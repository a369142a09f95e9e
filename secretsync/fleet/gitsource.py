"""The fleet repo as a Git URL + branch that the daemon pulls itself with the `git` CLI.

    checkout = GitCheckout(url=..., branch="main", folder=Path("/var/lib/secretsync/fleet"),
                           credentials_file=Path("/etc/secretsync/git/.git-credentials"))
    commit = await checkout.pull()   # init once, fetch, reset --hard to origin/BRANCH
    ...                              # validate the tree at `commit`
    await checkout.accept(commit)    # or: await checkout.restore(), back to the last good one

Every git call is an explicit argv (no shell of ours), with a timeout (the whole process
group is killed when it runs out), stdin closed, `GIT_TERMINAL_PROMPT=0` (a missing or wrong
credential fails, it never prompts), and no system or global git config. Credentials come
only from `credentials_file`, through a credential helper (`python -m secretsync.fleet.gitsource
credential FILE`) that answers git's `get` on its stdin: they are never on an argv, in the
environment of git, in the repo's config or in a log line. The file has git's
`.git-credentials` format, one `https://USER:TOKEN@HOST[/PATH]` a line (the shape of a
Kubernetes Secret mounted as a file); the helper ignores git's `store` and `erase`, so the
file is only ever read. URLs that carry credentials themselves are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from secretsync.core import errors

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 120.0
MAX_MESSAGE: Final = 300
_USERINFO: Final = re.compile(r"://[^/@\s]*@")
_BRANCH: Final = re.compile(r"[A-Za-z0-9._/\-]{1,200}")
_SHA: Final = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


class GitError(errors.SecretSyncError):
    """A git call failed (unreachable remote, refused credential, missing branch, timeout)."""


def check_url(url: str) -> str:
    """The URL, or `errors.ConfigError` when it cannot be used (or carries credentials)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https", "ssh", "git", "file"):
        if parts.username or parts.password:
            raise errors.ConfigError(
                "must not carry credentials: put them in --git-credentials-file",
                field="--git-url",
            )
        return url
    if re.fullmatch(r"[A-Za-z0-9._\-]+@[A-Za-z0-9.\-]+:[^\s]+", url):  # scp-like ssh
        return url
    raise errors.ConfigError(
        "must be an https://, http://, ssh://, git:// or file:// URL", field="--git-url"
    )


def check_branch(branch: str) -> str:
    if not _BRANCH.fullmatch(branch) or ".." in branch or branch.startswith(("-", "/")):
        raise errors.ConfigError(f"{branch!r} is not a usable branch name", field="--git-branch")
    return branch


class GitCheckout:
    """One working folder kept at the newest commit of `branch` that the caller accepted."""

    def __init__(
        self,
        *,
        url: str,
        branch: str,
        folder: Path,
        credentials_file: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        git: str = "git",
    ) -> None:
        self.url = check_url(url)
        self.branch = check_branch(branch)
        self.folder = folder
        self.credentials_file = credentials_file
        self.timeout_s = timeout_s
        self.good: str | None = None
        """The last accepted commit (the one running)."""
        self.refused: str | None = None
        """The newest commit that failed validation, until a later one is accepted."""
        self._git = git
        self._env = scrubbed_env(env if env is not None else os.environ, home=folder)

    @property
    def env(self) -> Mapping[str, str]:
        """The scrubbed environment of this checkout's git calls."""
        return self._env

    def __repr__(self) -> str:
        return f"GitCheckout(url={self.url!r}, branch={self.branch!r}, folder={self.folder})"

    async def pull(self) -> str:
        """Fetch the branch and reset the working folder to it; the commit (hex). Raises
        `GitError`; the folder is left as it was when the fetch fails."""
        if not (self.folder / ".git").is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            await self._run("init", "--quiet", str(self.folder), in_folder=False)
        remote = f"refs/remotes/origin/{self.branch}"
        await self._run(
            *credential_config(self.credentials_file),
            "fetch",
            "--quiet",
            "--no-tags",
            "--force",
            "--",
            self.url,
            f"+refs/heads/{self.branch}:{remote}",
        )
        await self._run("reset", "--quiet", "--hard", remote)
        return await self.head()

    async def head(self) -> str:
        commit = (await self._run("rev-parse", "--verify", "HEAD^{commit}")).strip()
        if not _SHA.fullmatch(commit):
            raise GitError("git rev-parse gave no commit")
        return commit

    async def accept(self, commit: str) -> None:
        if commit != self.good:
            log.info("fleet repo %s (%s): running commit %s", self.url, self.branch, commit)
        self.good, self.refused = commit, None

    async def restore(self, refused: str) -> None:
        """Remember `refused` and put the working folder back at the last good commit."""
        self.refused = refused
        if self.good is not None and self.good != refused:
            await self._run("reset", "--quiet", "--hard", self.good)

    async def _run(self, *args: str, in_folder: bool = True) -> str:
        done = await run_git(
            self._git,
            *args,
            folder=self.folder if in_folder else None,
            env=self._env,
            timeout_s=self.timeout_s,
        )
        return done.checked()


@dataclass(frozen=True, slots=True)
class GitResult:
    """A finished git call: its exit code and output (never logged whole: see `_message`)."""

    command: str
    returncode: int
    stdout: bytes
    stderr: bytes

    def checked(self) -> str:
        """stdout as text, or `GitError` with git's last line when the call failed."""
        if self.returncode != 0:
            raise GitError(f"git {self.command} failed ({self.returncode}): {self.message}")
        return self.stdout.decode("utf-8", "replace")

    @property
    def message(self) -> str:
        return _message(self.stderr)


def scrubbed_env(base: Mapping[str, str], *, home: Path) -> dict[str, str]:
    """The whole environment of every git call: PATH and HOME only from `base`, no prompt, no
    system or global config."""
    return {
        "PATH": base.get("PATH", "/usr/bin:/bin"),
        "HOME": base.get("HOME", str(home)),
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }


def credential_config(credentials_file: Path | None) -> list[str]:
    """`-c` options for a call that talks to the remote: no inherited helper, and ours when
    there is a credentials file."""
    out = ["-c", "credential.helper="]
    if credentials_file is not None:
        out += ["-c", f"credential.helper={credential_helper(credentials_file)}"]
    return out


async def run_git(
    git: str,
    *args: str,
    folder: Path | None,
    env: Mapping[str, str],
    timeout_s: float,
    stdin: bytes | None = None,
) -> GitResult:
    """One git call: an explicit argv (no shell), `env` as its whole environment, `stdin` or
    nothing on its stdin, killed with its helpers after `timeout_s` (`GitError`)."""
    argv = [git, *(["-C", str(folder)] if folder is not None else []), *args]
    command = next(a for a in args if not a.startswith("-") and "=" not in a)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,  # a timeout ends git and the helpers it started
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        raise GitError(f"git {command} timed out after {timeout_s:g} s") from None
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        await proc.wait()
        raise
    return GitResult(command, proc.returncode or 0, out, err)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _message(stderr: bytes) -> str:
    """Git's last meaningful line, without any userinfo of a URL, cut short."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    text = _USERINFO.sub("://***@", lines[-1] if lines else "no message")
    return text[:MAX_MESSAGE]


# --- the credential helper -------------------------------------------------------------------


def credential_helper(credentials_file: Path) -> str:
    """The `credential.helper` value that answers from `credentials_file` (a path, not a
    credential: git runs it as a command line and appends the action)."""
    file = str(credentials_file.absolute())
    return shlex.join([sys.executable, "-m", "secretsync.fleet.gitsource", "credential", file])


def credential_answer(request: Mapping[str, str], lines: Sequence[str]) -> dict[str, str] | None:
    """The username and password for git's request (protocol, host, maybe path) from
    `.git-credentials` lines, or None. The first line whose protocol and host match (and
    whose path, if it has one, is a prefix of the asked path) wins, as with git's store."""
    for line in lines:
        parts = urllib.parse.urlsplit(line.strip())
        if not parts.scheme or not parts.hostname or parts.password is None:
            continue
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        if parts.scheme != request.get("protocol") or host != request.get("host"):
            continue
        want = parts.path.strip("/")
        if want and not request.get("path", "").strip("/").startswith(want):
            continue
        return {
            "username": urllib.parse.unquote(parts.username or ""),
            "password": urllib.parse.unquote(parts.password),
        }
    return None


def credential_main(argv: Sequence[str], stdin: TextIO, stdout: TextIO) -> int:
    """`credential FILE ACTION`: answer git's `get` from FILE; ignore `store` / `erase`."""
    if len(argv) != 3 or argv[0] != "credential":
        return 2
    path, action = Path(argv[1]), argv[2]
    request: dict[str, str] = {}
    for line in stdin:
        if not line.strip():
            break
        key, _, value = line.rstrip("\n").partition("=")
        request[key] = value
    if action != "get":
        return 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return 0  # git then fails the fetch with its own "could not read Username"
    answer = credential_answer(request, lines)
    if answer is not None:
        stdout.write("".join(f"{k}={v}\n" for k, v in answer.items()))
    return 0


if __name__ == "__main__":
    sys.exit(credential_main(sys.argv[1:], sys.stdin, sys.stdout))

"""Real Git remotes for the write-back tests: a bare repository (file:// URL), the same served
over smart HTTP with basic auth (`git http-backend` as CGI behind a small server on 127.0.0.1),
an author's clone that commits to it, and `pre-receive` hooks that play another writer (moves
the branch during our push) or hold a push until the test lets it go."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from secretsync.app import wiring
from secretsync.daemon.service import Daemon
from secretsync.daemon.settings import DaemonSettings
from tests.support import canary

GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
    "GIT_TERMINAL_PROMPT": "0",
}
HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"

# Moves BRANCH once (or every time) while a push to it is being received: the pusher then gets
# "! [remote rejected] ... (failed to update ref)", as when another writer won the race.
_RACER = """#!/bin/sh
unset GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
export GIT_AUTHOR_NAME=racer GIT_AUTHOR_EMAIL=racer@example.invalid
export GIT_COMMITTER_NAME=racer GIT_COMMITTER_EMAIL=racer@example.invalid
[ -e "$GIT_DIR/raced-enough" ] && exit 0
while read old new ref; do
  [ "$ref" = "refs/heads/{branch}" ] || continue
  [ "$old" = 0000000000000000000000000000000000000000 ] && continue
  moved=$(git commit-tree "$old^{{tree}}" -p "$old" -m "another writer")
  git update-ref "refs/heads/{branch}" "$moved" "$old"
  echo "$moved" >> "$GIT_DIR/racer-commits"
done
{once}
exit 0
"""

# Holds a push until the test writes "accept" or "reject" into $GIT_DIR/verdict (60 s at most).
_HOLD = """#!/bin/sh
cat > /dev/null
touch "$GIT_DIR/push-arrived"
i=0
while [ ! -s "$GIT_DIR/verdict" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
[ "$(cat "$GIT_DIR/verdict" 2>/dev/null)" = accept ]
"""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, timeout=60, check=True
    )
    return done.stdout.decode()


class BareRemote:
    """A bare repository and an author's clone that commits and pushes to it. Both folders are
    registered for the canary scan."""

    def __init__(self, tmp: Path, *, name: str = "fleet.git") -> None:
        self.root = tmp / "served"
        self.bare = self.root / name
        self.author = tmp / "author"
        self.root.mkdir(parents=True, exist_ok=True)
        git(tmp, "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git(tmp, "init", "--quiet", "--initial-branch=main", str(self.author))
        git(self.author, "remote", "add", "origin", str(self.bare))
        canary.FLEET_REPOS.extend([self.bare, self.author])

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: dict[str, str | bytes | None], message: str) -> str:
        git(self.author, "fetch", "--quiet", "origin")
        if git(self.author, "ls-remote", "origin", "refs/heads/main").strip():
            git(self.author, "reset", "--quiet", "--hard", "origin/main")
        for rel, content in files.items():
            path = self.author / rel
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        git(self.author, "add", "--all")
        git(self.author, "commit", "--quiet", "-m", message)
        git(self.author, "push", "--quiet", "origin", "HEAD:refs/heads/main")
        return git(self.author, "rev-parse", "HEAD").strip()

    def head(self, branch: str = "main") -> str | None:
        out = git(self.bare, "for-each-ref", "--format=%(objectname)", f"refs/heads/{branch}")
        return out.strip() or None

    def show(self, rev: str, path: str) -> str:
        return git(self.bare, "show", f"{rev}:{path}")

    def log(self, *args: str) -> str:
        return git(self.bare, "log", *args)

    def is_ancestor(self, older: str, newer: str) -> bool:
        done = subprocess.run(
            ["git", "merge-base", "--is-ancestor", older, newer],
            check=False,
            cwd=self.bare,
            env=GIT_ENV,
            capture_output=True,
            timeout=60,
        )
        return done.returncode == 0

    def race(self, *, branch: str = "main", times: int = 1) -> None:
        """Move `branch` during the next `times` pushes (0: every push)."""
        once = (
            f'[ $(wc -l < "$GIT_DIR/racer-commits") -ge {times} ] && touch "$GIT_DIR/raced-enough"'
        )
        self._hook(_RACER.format(branch=branch, once=once if times else ""))

    def racer_commits(self) -> list[str]:
        path = self.bare / "racer-commits"
        return path.read_text().split() if path.exists() else []

    def hold(self) -> None:
        """Hold the next push until `verdict("accept" | "reject")`."""
        self._hook(_HOLD)

    def push_arrived(self) -> bool:
        return (self.bare / "push-arrived").exists()

    def verdict(self, text: str) -> None:
        (self.bare / "verdict").write_text(text)

    def no_hooks(self) -> None:
        for name in ("pre-receive", "raced-enough", "racer-commits", "push-arrived", "verdict"):
            path = (self.bare / "hooks" / name) if name == "pre-receive" else self.bare / name
            path.unlink(missing_ok=True)

    def _hook(self, script: str) -> None:
        hook = self.bare / "hooks" / "pre-receive"
        hook.write_text(script)
        hook.chmod(0o755)


class _Backend(BaseHTTPRequestHandler):
    """`git http-backend` as CGI, behind basic auth."""

    server: _Server

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def log_message(self, format: str, *args: object) -> None:
        self.server.requests.append(f"{self.command} {self.path.partition('?')[0]}")

    def _cgi(self) -> None:
        if self.headers.get("Authorization") != self.server.expected:
            self.server.refused += 1
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self._body()
        env = {
            "PATH": GIT_ENV["PATH"],
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.server.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": self.server.user,
            "REMOTE_ADDR": "127.0.0.1",
        }
        for header, variable in (
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ("Git-Protocol", "GIT_PROTOCOL"),
        ):
            if (value := self.headers.get(header)) is not None:
                env[variable] = value
        done = subprocess.run(
            [HTTP_BACKEND], input=body, env=env, capture_output=True, timeout=120, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    project_root: Path
    user: str
    expected: str
    refused: int
    requests: list[str]


@contextmanager
def smart_http(remote: BareRemote, *, user: str, token: str) -> Iterator[_Server]:
    """Serve `remote`'s folder over smart HTTP on 127.0.0.1 with basic auth USER:TOKEN; the
    repository's URL is `http://127.0.0.1:PORT/<name>`."""
    assert shutil.which(HTTP_BACKEND) or os.path.exists(HTTP_BACKEND)
    server = _Server(("127.0.0.1", 0), _Backend)
    server.project_root = remote.root
    server.user = user
    server.expected = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
    server.refused = 0
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, name="git-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def http_url(server: _Server, remote: BareRemote) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}/{remote.bare.name}"


def ssh_signing_key(path: Path, *, comment: str) -> Path:
    """A fresh ed25519 key (no passphrase) at `path` for signing commits, its mode 0440 as a
    Secret mounted with the pod's fsGroup gives it (ssh-keygen refuses a group-readable key)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
        capture_output=True,
    )
    path.chmod(0o440)
    return path


def git_daemon(checkout: Path, url: str, *, hmac_key: bytes, **settings: Any) -> Daemon:
    """The daemon (in this process, no Kubernetes) pulling its fleet from branch main of `url`
    into `checkout`, with PATH and HOME only; `settings` adds to or overrides DaemonSettings."""
    options: dict[str, Any] = {
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(checkout.parent)},
        "interval_s": 3600,
        "kube": False,
        "git_branch": "main",
        "git_timeout_s": 30,
    }
    options.update(settings)
    return Daemon(
        settings=DaemonSettings(fleet_path=checkout, hmac_key=hmac_key, git_url=url, **options),
        make_sources=wiring.build_sources,
    )

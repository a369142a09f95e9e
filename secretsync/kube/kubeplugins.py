"""Kubeconfig credential plugins: which may run, and how they run.

A kubeconfig user may name a program to run for its credentials: `exec` (the way EKS, GKE
and AKS clusters authenticate: `aws`, `gke-gcloud-auth-plugin`, `kubelogin`) or the `cmd-path`
of a `gcp` `auth-provider`. Whoever writes the kubeconfig picks the program and its
arguments, so none runs unless the operator allowed its base name (`--allow-exec-plugin`,
`SECRETSYNC_ALLOW_EXEC_PLUGINS`); an `auth-provider` without a command is allowed by its name
(`oidc`, `gcp`). The kubernetes client runs plugins with the whole process environment, so
`screen` hands it a kubeconfig without them and an allowed plugin runs here instead:

- its command is found on the process's PATH (never on one the kubeconfig sets; a relative
  command is taken from the kubeconfig file's folder) and must not lie inside the fleet repo;
- its environment is the process's minus secretsync's own credentials and settings
  (`VAULT_*`, `BAO_*`, `SECRETSYNC_*`, `SOPS_*`), plus the kubeconfig's `env` entries (minus
  the same names);
- stdin is closed, it gets PLUGIN_TIMEOUT_S, and its output is never repeated in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from secretsync.core import errors

FLAG = "--allow-exec-plugin"
ENV_VAR = "SECRETSYNC_ALLOW_EXEC_PLUGINS"
SCRUBBED_PREFIXES = ("VAULT_", "BAO_", "SECRETSYNC_", "SOPS_")
PLUGIN_TIMEOUT_S = 30.0
MAX_OUTPUT = 1024 * 1024
_API_VERSIONS = (
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
    "client.authentication.k8s.io/v1alpha1",
)


def parse_allowed(items: Iterable[str]) -> frozenset[str]:
    """Plugin base names from repeated flags and comma-separated lists; ValueError on a path."""
    names: set[str] = set()
    for item in items:
        for word in item.split(","):
            name = word.strip()
            if not name:
                continue
            if "/" in name or name in (".", ".."):
                raise ValueError(f"{name!r} is not a base name (give `aws`, not a path)")
            names.add(name)
    return frozenset(names)


def is_scrubbed(name: str) -> bool:
    return name.upper().startswith(SCRUBBED_PREFIXES)


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginPolicy:
    """What the operator allows: plugin base names, the environment they start from (the
    process's, scrubbed here), and the fleet repo no plugin command may come from."""

    allowed: frozenset[str] = frozenset()
    env: Mapping[str, str] = field(default_factory=dict)
    repo: Path | None = None

    def check(self, name: str, where: str) -> None:
        if name not in self.allowed:
            raise errors.DeliveryError(
                f"{where}: credential plugin {name!r} is not allowed; an operator who trusts "
                f"it passes {FLAG} {name} (or {ENV_VAR}={name})"
            )

    def environment(self, extra: Mapping[str, str] = {}) -> dict[str, str]:
        merged = {**self.env, **extra}
        return {k: v for k, v in merged.items() if not is_scrubbed(k)}

    def command(self, command: str, *, base: Path | None, name: str, where: str) -> str:
        """The absolute path of a plugin command, refused when missing or inside the repo."""
        if "/" in command:
            path = Path(command)
            if not path.is_absolute():
                if base is None:
                    raise errors.DeliveryError(
                        f"{where}: credential plugin {name!r}: a relative command needs a "
                        "kubeconfig file to be relative to"
                    )
                path = base / path
            found = str(path) if os.access(path, os.X_OK) and path.is_file() else None
        else:
            found = shutil.which(command, path=self.env.get("PATH", os.defpath))
        if found is None:
            raise errors.DeliveryError(f"{where}: credential plugin {name!r} not found")
        absolute = Path(os.path.abspath(found))
        if self.repo is not None:
            real, repo = absolute.resolve(), self.repo.resolve()
            if real == repo or repo in real.parents:
                raise errors.DeliveryError(
                    f"{where}: credential plugin {name!r} lies inside the fleet repo"
                )
        return str(absolute)


NO_PLUGINS = PluginPolicy()


class Credential(NamedTuple):
    token: str | None
    client_pem: bytes | None  # certificate and key, PEM, for the TLS context
    expires: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecPlugin:
    """One allowed `exec` plugin, ready to run: resolved argv, scrubbed environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    api_version: str
    cluster: Mapping[str, Any] | None
    where: str

    async def run(self) -> Credential:
        info: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            info["cluster"] = dict(self.cluster)
        env = {
            **self.env,
            "KUBERNETES_EXEC_INFO": json.dumps(
                {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": info}
            ),
        }
        what = f"{self.where}: credential plugin {self.name!r}"
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise errors.DeliveryError(f"{what} cannot start: {exc.strerror}") from None
        try:
            async with asyncio.timeout(PLUGIN_TIMEOUT_S):
                out, _ = await process.communicate()
        except TimeoutError:
            _kill_group(process.pid)
            await process.wait()
            raise errors.DeliveryError(f"{what} timed out after {PLUGIN_TIMEOUT_S:g} s") from None
        if process.returncode != 0:
            raise errors.DeliveryError(f"{what} failed (exit status {process.returncode})")
        return _credential(out, api_version=self.api_version, what=what)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _credential(out: bytes, *, api_version: str, what: str) -> Credential:
    bad = errors.DeliveryError(f"{what} did not print an ExecCredential ({api_version})")
    if len(out) > MAX_OUTPUT:
        raise bad
    try:
        doc = json.loads(out)
    except ValueError:
        raise bad from None
    status = doc.get("status") if isinstance(doc, dict) else None
    if (
        not isinstance(status, dict)
        or doc.get("kind") != "ExecCredential"
        or doc.get("apiVersion") != api_version
    ):
        raise bad
    token = status.get("token")
    cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
    pem: bytes | None = None
    if isinstance(cert, str) and isinstance(key, str) and cert and key:
        pem = f"{cert.rstrip()}\n{key.rstrip()}\n".encode()
    if not (isinstance(token, str) and token) and pem is None:
        raise bad
    expires = None
    stamp = status.get("expirationTimestamp")
    if isinstance(stamp, str):
        try:
            expires = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            raise bad from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
    return Credential(
        token=token if isinstance(token, str) and token else None, client_pem=pem, expires=expires
    )


class _GcpToken(NamedTuple):
    token: str
    expiry: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class GcpCommand:
    """The `cmd-path` of an allowed `gcp` auth-provider, run like an exec plugin; the
    kubernetes client calls it (synchronously) for a token when its cached one has expired."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    what: str

    def __call__(self) -> _GcpToken:
        try:
            done = subprocess.run(
                self.argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=dict(self.env),
                cwd=self.cwd,
                timeout=PLUGIN_TIMEOUT_S,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise errors.DeliveryError(
                f"{self.what} timed out after {PLUGIN_TIMEOUT_S:g} s"
            ) from None
        except OSError as exc:
            raise errors.DeliveryError(f"{self.what} cannot start: {exc.strerror}") from None
        if done.returncode != 0:
            raise errors.DeliveryError(f"{self.what} failed (exit status {done.returncode})")
        try:
            credential = json.loads(done.stdout)["credential"]
            expiry = datetime.fromisoformat(str(credential["token_expiry"]).replace("Z", "+00:00"))
            return _GcpToken(token=str(credential["access_token"]), expiry=expiry)
        except (ValueError, KeyError, TypeError):
            raise errors.DeliveryError(f"{self.what} printed no gcp credential") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Screened:
    """A kubeconfig the kubernetes client may parse (it runs no program), and what runs here."""

    config: dict[str, Any]
    plugin: ExecPlugin | None = None
    gcp: GcpCommand | None = None


def _named(items: object, name: object) -> int | None:
    """The index of the entry called `name` in a kubeconfig list (the first, as kubectl)."""
    for index, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("name") == name:
            return index
    return None


def _entry(items: object, name: object, key: str) -> Mapping[str, Any] | None:
    index = _named(items, name)
    inner = items[index].get(key) if index is not None and isinstance(items, list) else None
    return inner if isinstance(inner, dict) else None


def screen(
    config: Mapping[str, Any],
    *,
    context: str | None,
    policy: PluginPolicy,
    where: str,
    base: Path | None,
) -> Screened:
    """Refuse a kubeconfig whose user needs a plugin the operator did not allow; otherwise
    the kubeconfig without any plugin, and the selected user's plugin ready to run here.

    Every user loses `exec` and `auth-provider` before the client sees the kubeconfig, so no
    program runs through the client whichever user it ends up selecting; only the selected
    user's allowed `auth-provider` is given back, without its `cmd-path` (which runs as
    `Screened.gcp`).
    """
    users = config.get("users")
    inner = _entry(config.get("contexts"), context or config.get("current-context"), "context")
    selected = _named(users, inner.get("user")) if inner else None
    user = _entry(users, inner.get("user"), "user") if inner else None
    cwd = str(base) if base is not None else None
    plugin: ExecPlugin | None = None
    gcp: GcpCommand | None = None
    provider = user.get("auth-provider") if user else None
    kept_provider: dict[str, Any] | None = None
    if isinstance(provider, dict):
        given = provider.get("config")
        settings: dict[str, Any] = given if isinstance(given, dict) else {}
        cmd_path, cmd_args = settings.get("cmd-path"), settings.get("cmd-args")
        if isinstance(cmd_path, str) and cmd_path.strip():
            words = cmd_path.split()
            command = cmd_path if isinstance(cmd_args, str) else words[0]
            args = cmd_args.split() if isinstance(cmd_args, str) else words[1:]
            name = Path(command).name
            policy.check(name, where)
            argv = (policy.command(command, base=base, name=name, where=where), *args)
            gcp = GcpCommand(
                argv=argv,
                env=policy.environment(),
                cwd=cwd,
                what=f"{where}: credential plugin {name!r}",
            )
        else:
            policy.check(str(provider.get("name")), where)
        kept_provider = {
            **provider,
            "config": {k: v for k, v in settings.items() if k not in ("cmd-path", "cmd-args")},
        }
    elif user is not None and isinstance(spec := user.get("exec"), dict):
        plugin = _exec_plugin(spec, config, inner or {}, policy=policy, where=where, base=base)
    stripped: list[Any] = []
    for index, entry in enumerate(users if isinstance(users, list) else []):
        if not (isinstance(entry, dict) and isinstance(entry.get("user"), dict)):
            stripped.append(entry)
            continue
        fields = {k: v for k, v in entry["user"].items() if k not in ("exec", "auth-provider")}
        if index == selected and kept_provider is not None:
            fields["auth-provider"] = kept_provider
        stripped.append({**entry, "user": fields})
    out = {**config, "users": stripped} if users is not None else dict(config)
    return Screened(config=out, plugin=plugin, gcp=gcp)


def _exec_plugin(
    spec: Mapping[str, Any],
    config: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    policy: PluginPolicy,
    where: str,
    base: Path | None,
) -> ExecPlugin:
    command = spec.get("command")
    if not isinstance(command, str) or not command:
        raise errors.DeliveryError(f"{where}: the user's exec plugin has no command")
    name = Path(command).name
    policy.check(name, where)
    api_version = spec.get("apiVersion")
    if api_version not in _API_VERSIONS:
        raise errors.DeliveryError(
            f"{where}: credential plugin {name!r}: apiVersion must be one of "
            + ", ".join(_API_VERSIONS)
        )
    if spec.get("interactiveMode") == "Always":
        raise errors.DeliveryError(
            f"{where}: credential plugin {name!r} wants a terminal (interactiveMode: Always)"
        )
    raw_args, raw_env = spec.get("args") or [], spec.get("env") or []
    if not isinstance(raw_args, list) or not isinstance(raw_env, list):
        raise errors.DeliveryError(f"{where}: credential plugin {name!r}: malformed args or env")
    extra = {
        str(e["name"]): str(e.get("value", ""))
        for e in raw_env
        if isinstance(e, dict) and e.get("name")
    }
    cluster = _entry(config.get("clusters"), context.get("cluster"), "cluster")
    return ExecPlugin(
        name=name,
        argv=(policy.command(command, base=base, name=name, where=where), *map(str, raw_args)),
        env=policy.environment(extra),
        cwd=str(base) if base is not None else None,
        api_version=str(api_version),
        cluster=cluster if spec.get("provideClusterInfo") else None,
        where=where,
    )

"""The commands' shared parts: process Settings, exit codes, the usage error, output, fleet loading,
and the options several commands take."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from secretsync.core import errors, selectors
from secretsync.core.model import Fleet, Selector
from secretsync.delivery.rendered import dump_yaml
from secretsync.fleet import load
from secretsync.kube import kubeplugins
from secretsync.sources import vaultaddress

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CHANGES = 0, 1, 2, 3


class UsageError(click.UsageError):
    exit_code = EXIT_USAGE


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Process settings built once from options and the environment."""

    output: str
    hmac_key: bytes | None
    env: Mapping[str, str]


def _hmac_key(env: Mapping[str, str], key_file: str | None) -> bytes | None:
    if key_file:
        try:
            data = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"cannot read HMAC key file {key_file}: {exc.strerror}") from None
        if not data:
            raise UsageError(f"HMAC key file {key_file} is empty")
        return data
    text = env.get("SECRETSYNC_HMAC_KEY")
    return text.encode("utf-8") if text else None


def _emit(settings: Settings, document: Mapping[str, Any] | list[Any]) -> None:
    if settings.output == "json":
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        click.echo(dump_yaml(document).decode("utf-8"), nl=False)


def _fail_config(exc: errors.ConfigError) -> NoReturn:
    problems = exc.errors if isinstance(exc, errors.ConfigErrors) else [exc]
    ctx = click.get_current_context(silent=True)
    settings = ctx.find_object(Settings) if ctx is not None else None
    if settings is not None and settings.output == "json":
        fields = ("file", "line", "field", "message")
        doc = {"valid": False, "errors": [{f: getattr(e, f) for f in fields} for e in problems]}
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    click.echo(exc.render(), err=True)
    count = len(problems)
    click.echo(f"{count} error(s); nothing was changed", err=True)
    sys.exit(EXIT_USAGE)


def _load(path: str) -> Fleet:
    try:
        return load.load_fleet(Path(path))
    except errors.ConfigError as exc:
        _fail_config(exc)


def _selector(text: str | None) -> Selector | None:
    if text is None:
        return None
    try:
        return selectors.parse(text)
    except ValueError as exc:
        raise UsageError(f"--selector: {exc}") from None


def _check_vault_address(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    text = (value or "").strip().rstrip("/")
    if text and (problem := vaultaddress.form_problem(text)):
        raise click.BadParameter(problem)
    return text or None


_vault_address_option = click.option(
    "--vault-address",
    envvar=vaultaddress.OVERRIDE_ENV,
    metavar="URL",
    callback=_check_vault_address,
    help="Vault / OpenBao address; wins over the Fleet's sources.vault.address "
    f"(${vaultaddress.OVERRIDE_ENV}; default: the Fleet's, then $VAULT_ADDR, $BAO_ADDR).",
)


_pass_settings = click.make_pass_decorator(Settings)


def _output_after_command(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        settings = ctx.find_object(Settings)
        if settings is not None:
            ctx.obj = dataclasses.replace(settings, output=value)


def pass_settings[F: Callable[..., Any]](command: F) -> F:
    """Pass the Settings, and take `-o yaml|json` after the command too (`secretsync plan
    FLEET -o json`), where it wins over one given before the command."""
    option = click.option(
        "-o",
        "--output",
        type=click.Choice(["yaml", "json"]),
        default=None,
        expose_value=False,
        callback=_output_after_command,
        help="Output format of reports (also accepted before the command).",
    )
    return option(_pass_settings(command))  # type: ignore[return-value]  # click drops F


def _hmac_or_random(settings: Settings) -> bytes:
    if settings.hmac_key is not None:
        return settings.hmac_key
    log.warning(
        "SECRETSYNC_HMAC_KEY is not set: a random key is used, so every object looks changed "
        "on every run (set it to keep unchanged values byte-identical and writes at zero)"
    )
    return secrets.token_bytes(32)


def _plugin_policy(settings: Settings, names: tuple[str, ...]) -> kubeplugins.PluginPolicy:
    """The kubeconfig credential plugins the operator allows (flags and environment)."""
    try:
        allowed = kubeplugins.parse_allowed([*names, settings.env.get(kubeplugins.ENV_VAR, "")])
    except ValueError as exc:
        raise UsageError(f"{kubeplugins.FLAG}: {exc}") from None
    return kubeplugins.PluginPolicy(allowed=allowed, env=settings.env)


def _home_client(path: str | None, plugins: kubeplugins.PluginPolicy) -> Any:
    """The API client of the cluster secretsync runs in (for kubeconfig secretRefs)."""
    if path is None:
        return None
    from secretsync.kube import clusters

    try:
        return clusters.endpoint_from_file(Path(path), plugins=plugins)
    except errors.DeliveryError as exc:
        raise UsageError(f"--home-kubeconfig: {exc}") from None


_check_refs_option = click.option(
    "--check-refs",
    is_flag=True,
    help="Also read the Vault refs of external clusters to confirm each path and key exists.",
)


_author_option = click.option(
    "--git-author",
    envvar="SECRETSYNC_GIT_AUTHOR",
    default="secretsync <secretsync@localhost>",
    show_default=True,
    metavar="'NAME <EMAIL>'",
    help="Author and committer of the commits secretsync makes.",
)


_signing_option = click.option(
    "--git-signing-key",
    envvar="SECRETSYNC_GIT_SIGNING_KEY",
    type=click.Path(dir_okay=False, exists=True),
    help="Sign the commits with this SSH private key (git's gpg.format=ssh; mode 0600).",
)


_cluster_option = click.option(
    "--cluster", "cluster", multiple=True, help="Only this cluster (repeatable)."
)


_selector_option = click.option("--selector", help="Only clusters matching this label selector.")


_allow_deletes_option = click.option(
    "--allow-deletes",
    is_flag=True,
    help="Lift the Fleet's deleteLimit for this run (a deliberate large clean-up).",
)


_timeout_option = click.option(
    "--cluster-timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds a cluster may go without answering before it is reported failed (others go on).",
)


_home_option = click.option(
    "--home-kubeconfig",
    envvar="SECRETSYNC_HOME_KUBECONFIG",
    type=click.Path(dir_okay=False),
    help="Kubeconfig of the cluster holding kubeconfig Secrets (default: in-cluster).",
)


_plugins_option = click.option(
    kubeplugins.FLAG,
    "exec_plugins",
    multiple=True,
    metavar="NAME",
    help="Let kubeconfigs run this credential plugin (exec command or auth-provider), by base "
    "name, e.g. aws (repeatable; also $SECRETSYNC_ALLOW_EXEC_PLUGINS, comma-separated). It "
    "runs without VAULT_*, BAO_*, SECRETSYNC_*, SOPS_* in its environment.",
)

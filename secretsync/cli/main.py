"""The `secretsync` command line: the click group, its process options, and the commands.

The only place (with the daemon) that reads the environment and argv. Output is YAML by
default, JSON with `-o json`. Exit codes: 0 done, 1 done but some items failed (each named),
2 bad input or usage. Values never come from argv in examples; nothing prompts. Each command
lives in a module of its own: options → settings → one library call.
"""

from __future__ import annotations

import os

import click

from secretsync import __version__
from secretsync.app import runtime
from secretsync.cli.cluster import cluster_group
from secretsync.cli.common import Settings, _hmac_key
from secretsync.cli.reconcile import plan, render, sync
from secretsync.cli.scan import scan_command
from secretsync.cli.sealing import seal_command, unseal
from secretsync.cli.serve import serve
from secretsync.cli.validate import validate
from secretsync.core import logs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="secretsync")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Output format of reports.",
)
@click.option(
    "--log-level",
    envvar="SECRETSYNC_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--log-format",
    envvar="SECRETSYNC_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
)
@click.option(
    "--hmac-key-file",
    envvar="SECRETSYNC_HMAC_KEY_FILE",
    type=click.Path(dir_okay=False),
    help="File holding the content-hash key (default: $SECRETSYNC_HMAC_KEY).",
)
@click.pass_context
def main_group(
    ctx: click.Context, output: str, log_level: str, log_format: str, hmac_key_file: str | None
) -> None:
    """Distribute secrets to a fleet of Kubernetes clusters from one Git repository."""
    runtime.tune()
    logs.setup(level=log_level, fmt=log_format)
    env = dict(os.environ)
    ctx.obj = Settings(output=output, hmac_key=_hmac_key(env, hmac_key_file), env=env)


for _command in (
    validate,
    render,
    plan,
    sync,
    serve,
    seal_command,
    cluster_group,
    unseal,
    scan_command,
):
    main_group.add_command(_command)


def main() -> None:
    main_group(prog_name="secretsync")

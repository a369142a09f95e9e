"""`secretsync scan`: plaintext Secrets and SOPS files their Fleet does not allow, for pre-commit
and CI."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from secretsync.cli.common import EXIT_FAILED, EXIT_OK, Settings, _emit, _fail_config, pass_settings
from secretsync.core import errors
from secretsync.core.model import SopsSettings
from secretsync.fleet import load, scan

if TYPE_CHECKING:
    pass


class _SopsPolicies:
    """The `sources.sops` policy for a folder: that of the nearest secretsync.yaml at or above
    it, not past the top of its Git work tree; the default policy without one."""

    def __init__(self) -> None:
        self._by_folder: dict[Path, SopsSettings] = {}

    def __call__(self, folder: Path) -> SopsSettings:
        folder = folder.resolve()
        hit = self._by_folder.get(folder)
        if hit is None:
            if (folder / load.FLEET_FILE).is_file():
                try:
                    hit = load.load_fleet_settings(folder).sops
                except errors.ConfigErrors as exc:  # named from here, like scan's findings
                    named = [
                        errors.ConfigError(
                            e.message, file=_from_here(folder, e.file), line=e.line, field=e.field
                        )
                        for e in exc.errors
                    ]
                    raise errors.ConfigErrors(named) from None
            elif (folder / ".git").exists() or folder.parent == folder:
                hit = SopsSettings()
            else:
                hit = self(folder.parent)
            self._by_folder[folder] = hit
        return hit


def _from_here(folder: Path, file: str) -> str:
    """`file` of `folder` as the user would type it: relative to the working folder when it is
    below it, else absolute."""
    if not file:
        return file
    path = folder / file
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else Path(relative).as_posix()


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@pass_settings
def scan_command(settings: Settings, paths: tuple[str, ...]) -> None:
    """Find plaintext Secrets, unencrypted SOPS files and SOPS files naming keys their Fleet
    does not allow under PATHS (folders or files); exit 1 naming each (pre-commit passes the
    staged files). Files are named as given, or under the folder as given. A SOPS file is
    checked against the `sources.sops` policy of the nearest secretsync.yaml above it (in its
    Git work tree), else the default one (age, pgp)."""
    policies = _SopsPolicies()
    try:
        findings = [
            dataclasses.replace(f, file=path if Path(path).is_file() else f"{Path(path) / f.file}")
            for path in paths
            for f in scan.scan(Path(path), sops_policy=policies)
        ]
    except errors.ConfigError as exc:
        _fail_config(exc)
    if settings.output == "json":
        _emit(settings, {"findings": [dataclasses.asdict(f) for f in findings]})
    else:
        for f in findings:
            click.echo(f"{f.file}:{f.line}: {f.kind}: {f.message}")
    if findings:
        click.echo(f"{len(findings)} finding(s)", err=True)
    sys.exit(EXIT_FAILED if findings else EXIT_OK)

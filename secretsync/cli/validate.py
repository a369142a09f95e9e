"""`secretsync validate`: load and check the fleet repo without reading any source."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from secretsync.cli.common import Settings, _emit, _fail_config, _load, pass_settings
from secretsync.core import errors
from secretsync.delivery import sealed
from secretsync.fleet.certificates import FleetCertificates

if TYPE_CHECKING:
    pass


@click.command()
@click.argument("fleet", type=click.Path(file_okay=False))
@pass_settings
def validate(settings: Settings, fleet: str) -> None:
    """Load and check the fleet repo without reading any source.

    Checks schema, selectors, templates, policies, refs' shape and sealing certificates.
    Errors are printed as `file:line: field: message`; exit code 2 if there are any.
    """
    from secretsync.fleet import plan

    loaded = _load(fleet)
    try:
        desired = plan.plan(loaded)
    except errors.ConfigError as exc:
        _fail_config(exc)
    from secretsync.sources import sopskeys

    # the SOPS files' key groups, from their metadata: nothing is decrypted or contacted
    problems = sopskeys.check_files(loaded, sopskeys.readers_of(desired))
    now = datetime.now(UTC)
    certificates = FleetCertificates(loaded)
    for cluster in loaded.clusters.values():
        cert_file = sealed.settings(cluster).cert_file
        if cert_file is None:
            continue
        if (ref := certificates.awaiting(cluster)) is not None:
            click.echo(
                f"note: cluster {cluster.name}: no {cert_file} yet; `secretsync cluster "
                f"refresh-cert {cluster.name}` fetches it from {ref.namespace}/{ref.name}",
                err=True,
            )
            continue
        try:
            certificates.certificate(cluster, now=now)
        except errors.ConfigError as exc:
            problems.append(exc)
        except errors.SealError as exc:
            problems.append(
                errors.ConfigError(
                    str(exc),
                    file=cluster.origin.file,
                    line=cluster.origin.line,
                    field="spec.sealedSecrets.certFile",
                )
            )
    if problems:
        _fail_config(errors.ConfigErrors(problems))
    _emit(
        settings,
        {
            "fleet": loaded.name,
            "clusters": len(loaded.clusters),
            "fleetSecrets": len(loaded.secrets),
            "objects": len(desired),
            "valid": True,
        },
    )

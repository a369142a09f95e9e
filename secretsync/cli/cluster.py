"""`cluster add | refresh-cert | remove`: register a cluster, renew its sealing certificate, tear
down what was delivered to it."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from secretsync.app import wiring
from secretsync.cli.common import (
    EXIT_FAILED,
    Settings,
    UsageError,
    _emit,
    _fail_config,
    _home_client,
    _home_option,
    _load,
    _plugin_policy,
    _plugins_option,
    pass_settings,
)
from secretsync.core import errors
from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery import sealed
from secretsync.kube import kubeplugins

if TYPE_CHECKING:
    pass


@click.group("cluster")
def cluster_group() -> None:
    """Register clusters in the fleet repo, or tear down what secretsync delivered to one."""


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label takes KEY=VALUE, not {item!r}")
        out[key] = value
    return out


@cluster_group.command("add")
@click.argument("name")
@click.option("-f", "--fleet", "fleet_path", required=True, type=click.Path(file_okay=False))
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig to reach it now.")
@click.option("--context", help="Context in --kubeconfig.")
@click.option("--label", "label_items", multiple=True, metavar="KEY=VALUE")
@click.option("--delivery", type=click.Choice(list(delivery_kinds.kinds())))
@click.option("--controller-namespace", default="kube-system", show_default=True)
@click.option("--controller-name", default="sealed-secrets-controller", show_default=True)
@click.option(
    "--kubeconfig-secret",
    metavar="NAMESPACE/NAME",
    help="Record a kubeconfig Secret in the home cluster instead of the --kubeconfig path.",
)
@click.option("--allowed-namespace", "allowed", multiple=True, metavar="NS")
@_plugins_option
@pass_settings
def cluster_add(
    settings: Settings,
    name: str,
    fleet_path: str,
    kubeconfig: str | None,
    context: str | None,
    label_items: tuple[str, ...],
    delivery: str | None,
    controller_namespace: str,
    controller_name: str,
    kubeconfig_secret: str | None,
    allowed: tuple[str, ...],
    exec_plugins: tuple[str, ...],
) -> None:
    """Register cluster NAME: write clusters/NAME.yaml and, for sealed delivery, fetch its
    sealing certificate into certs/NAME.pem through the API server's service proxy."""
    from secretsync.fleet import enroll
    from secretsync.kube import clusters

    fleet = _load(fleet_path)
    chosen = delivery or fleet.default_delivery
    api = None
    if kubeconfig is not None:
        try:
            api = clusters.endpoint_from_file(
                Path(kubeconfig),
                context=context,
                plugins=dataclasses.replace(
                    _plugin_policy(settings, exec_plugins), repo=fleet.root
                ),
            )
        except errors.DeliveryError as exc:
            raise UsageError(f"--kubeconfig: {exc}") from None
    record: dict[str, object] = {}
    if kubeconfig_secret:
        namespace, sep, secret_name = kubeconfig_secret.partition("/")
        if not sep or not namespace or not secret_name:
            raise UsageError("--kubeconfig-secret takes NAMESPACE/NAME")
        record = {"secretRef": {"namespace": namespace, "name": secret_name}}
    elif kubeconfig is not None:
        record = {"path": str(Path(kubeconfig).resolve())}
        if context:
            record["context"] = context
    try:
        summary = enroll.add_cluster(
            fleet.root,
            name=name,
            labels=_labels(label_items),
            delivery=chosen,
            api=api,
            kubeconfig=record,
            controller_namespace=controller_namespace,
            controller_name=controller_name,
            allowed_namespaces=allowed,
            now=datetime.now(UTC),
        )
    except errors.ConfigError as exc:
        _fail_config(exc)
    except (errors.DeliveryError, errors.SealError) as exc:
        click.echo(f"cluster {name}: {exc}; nothing was written", err=True)
        sys.exit(EXIT_FAILED)
    _emit(settings, summary)


@cluster_group.command("refresh-cert")
@click.argument("name")
@click.option("-f", "--fleet", "fleet_path", required=True, type=click.Path(file_okay=False))
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False),
    help="Kubeconfig to reach it (default: the Cluster's own kubeconfig).",
)
@click.option("--context", help="Context in --kubeconfig.")
@click.option("--controller-namespace", help="Default: sealedSecrets.controller, else kube-system.")
@click.option("--controller-name", help="Default: sealedSecrets.controller, else the usual name.")
@_home_option
@_plugins_option
@pass_settings
def cluster_refresh_cert(
    settings: Settings,
    name: str,
    fleet_path: str,
    kubeconfig: str | None,
    context: str | None,
    controller_namespace: str | None,
    controller_name: str | None,
    home_kubeconfig: str | None,
    exec_plugins: tuple[str, ...],
) -> None:
    """Take the renewed sealing certificate of cluster NAME's sealed-secrets controller (it
    renews its key every 30 days): update certFile and the certificateSha256 pin, print the old
    and new fingerprints. The next render seals new values with it."""
    from secretsync.core.model import ControllerRef
    from secretsync.fleet import enroll
    from secretsync.kube import clusters

    fleet = _load(fleet_path)
    cluster = fleet.clusters.get(name)
    if cluster is None:
        raise UsageError(f"no cluster {name!r} in the fleet")
    ref = sealed.settings(cluster).controller or ControllerRef()
    ref = ControllerRef(
        namespace=controller_namespace or ref.namespace, name=controller_name or ref.name
    )

    plugins = _plugin_policy(settings, exec_plugins)

    async def go() -> enroll.Refreshed:
        factory = None
        if kubeconfig is not None:
            api = clusters.endpoint_from_file(
                Path(kubeconfig),
                context=context,
                plugins=dataclasses.replace(plugins, repo=fleet.root),
            )
        else:
            factory = clusters.ClientFactory(
                root=fleet.root, home=_home_client(home_kubeconfig, plugins), plugins=plugins
            )
            api = await factory.for_cluster(cluster)
        try:
            return await enroll.refresh_certificate(
                fleet.root, cluster=cluster, api=api, controller=ref, now=datetime.now(UTC)
            )
        finally:
            await (factory.aclose() if factory is not None else api.aclose())

    try:
        summary = asyncio.run(go())
    except errors.ConfigError as exc:
        _fail_config(exc)
    except (errors.DeliveryError, errors.SealError) as exc:
        click.echo(f"cluster {name}: {exc}; nothing was written", err=True)
        sys.exit(EXIT_FAILED)
    _emit(settings, summary.document())


@cluster_group.command("remove")
@click.argument("name")
@click.option("-f", "--fleet", "fleet_path", required=True, type=click.Path(file_okay=False))
@click.option("--yes", is_flag=True, help="Delete; otherwise only show what would be deleted.")
@_home_option
@_plugins_option
@pass_settings
def cluster_remove(
    settings: Settings,
    name: str,
    fleet_path: str,
    yes: bool,
    home_kubeconfig: str | None,
    exec_plugins: tuple[str, ...],
) -> None:
    """Remove everything secretsync delivered to cluster NAME (its API objects and its
    rendered folder). Shows what it would delete unless --yes. The Cluster stays in the fleet
    repo: delete its file too, or the next sync delivers again."""
    fleet = _load(fleet_path)
    cluster = fleet.clusters.get(name)
    if cluster is None:
        raise UsageError(f"unknown cluster {name!r}")
    has_api = cluster.kubeconfig is not None
    choice = wiring.SinkChoice(
        git=True,
        kube=has_api,
        home_kubeconfig=home_kubeconfig,
        plugins=_plugin_policy(settings, exec_plugins) if has_api else kubeplugins.NO_PLUGINS,
    )
    try:
        sinks = wiring.build_sinks(fleet, choice, hmac_key=settings.hmac_key or b"")
    except errors.DeliveryError as exc:
        raise UsageError(f"--home-kubeconfig: {exc}") from None
    git, kube = sinks.git, sinks.kube
    if git is None:  # asked for above: never
        raise RuntimeError("no Git sink")

    async def go() -> tuple[list[Any], list[Any]]:
        from secretsync.sinks.deliver import ChangeSet

        in_git = [o for o in (await git.observe(cluster)).values() if o.owned]
        try:
            in_api = await kube.observe_everything(cluster) if kube else []
            if yes:
                if in_git:
                    await git.apply(cluster, ChangeSet(delete=in_git))
                    await git.finish_cluster(cluster)
                if kube and in_api:
                    result = await kube.apply(cluster, ChangeSet(delete=in_api))
                    for key, reason in result.failed.items():
                        click.echo(f"failed: {key}: {reason}", err=True)
        finally:
            git.discard(cluster)
            if kube is not None:
                await kube.aclose()
        return in_git, in_api

    try:
        in_git, in_api = asyncio.run(go())
    except errors.DeliveryError as exc:
        click.echo(f"cluster {name}: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    _emit(
        settings,
        {
            "cluster": name,
            "deleted" if yes else "wouldDelete": {
                "api": [f"{o.kind} {o.key.namespace}/{o.key.name}" for o in in_api],
                "git": [f"{o.key.namespace}/{o.key.name}" for o in in_git],
            },
        },
    )

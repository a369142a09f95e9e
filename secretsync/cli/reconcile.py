"""`render`, `plan` and `sync`: options → settings → one engine cycle, then the report and the exit
code."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from secretsync.app import wiring
from secretsync.cli.common import (
    EXIT_CHANGES,
    EXIT_FAILED,
    EXIT_OK,
    Settings,
    UsageError,
    _allow_deletes_option,
    _author_option,
    _check_refs_option,
    _cluster_option,
    _emit,
    _fail_config,
    _hmac_or_random,
    _home_option,
    _load,
    _plugin_policy,
    _plugins_option,
    _selector,
    _selector_option,
    _signing_option,
    _timeout_option,
    _vault_address_option,
    pass_settings,
)
from secretsync.cli.report import _changes, _headline, _report_doc
from secretsync.core import errors
from secretsync.core.model import DeleteLimit, Fleet, Selector
from secretsync.engine.cycle import select_clusters
from secretsync.engine.report import CycleReport
from secretsync.kube import kubeplugins

if TYPE_CHECKING:
    pass


def _check_filters(fleet: Fleet, cluster: tuple[str, ...], sel: Selector | None) -> None:
    """`--cluster` / `--selector` that name nothing are usage errors, as with `seal`: a typo in
    a filter must not pass for "nothing to do"."""
    unknown = [n for n in cluster if n not in fleet.clusters]
    if unknown:
        raise UsageError(f"--cluster: unknown cluster(s): {', '.join(unknown)}")
    if (cluster or sel is not None) and not select_clusters(fleet, names=cluster, selector=sel):
        raise UsageError("--selector: no cluster of the fleet matches")


def _run(
    settings: Settings,
    fleet_path: str,
    *,
    cluster: tuple[str, ...],
    selector: str | None,
    dry_run: bool,
    verbose: bool,
    out: str | None = None,
    git: bool = True,
    kube: bool = False,
    home_kubeconfig: str | None = None,
    exec_plugins: tuple[str, ...] = (),
    cluster_timeout: float = 60.0,
    check_refs: bool = False,
    commit_as: str | None = None,
    signing_key: str | None = None,
    allow_deletes: bool = False,
    exit_code: bool = False,
    vault_address: str | None = None,
) -> None:
    fleet = _load(fleet_path)
    sel = _selector(selector)
    _check_filters(fleet, cluster, sel)
    repo = (
        _output_repo(settings, out, fleet, commit_as, signing_key)
        if commit_as is not None
        else None
    )
    key = _hmac_or_random(settings)
    choice = wiring.SinkChoice(
        git=git,
        out_dir=Path(out) if out else None,  # the operator's own path
        kube=kube,
        home_kubeconfig=home_kubeconfig,
        plugins=_plugin_policy(settings, exec_plugins) if kube else kubeplugins.NO_PLUGINS,
    )
    try:
        sinks = wiring.build_sinks(fleet, choice, hmac_key=key)
    except errors.DeliveryError as exc:
        raise UsageError(f"--home-kubeconfig: {exc}") from None
    try:
        sources = wiring.build_sources(fleet, settings.env, vault_address=vault_address)
    except errors.ConfigError as exc:
        _fail_config(exc)
    engine = wiring.build_engine(
        sources=sources, sinks=sinks.all, hmac_key=key, cluster_timeout_s=cluster_timeout
    )

    async def go() -> CycleReport:
        try:
            return await engine.run_cycle(
                fleet,
                clusters=cluster,
                selector=sel,
                dry_run=dry_run,
                check_refs=check_refs,
                allow_deletes=allow_deletes,
                check_sops_keys=True,
            )
        finally:
            for source in engine.sources.values():
                await source.aclose()
            await sinks.aclose()

    try:
        report = asyncio.run(go())
    except errors.ConfigError as exc:
        _fail_config(exc)
    committed = _commit(repo, report) if repo is not None else None
    doc = _report_doc(report, verbose=verbose)
    if repo is not None:
        doc["commit"] = committed
    _add_sink_counts(doc, sinks, dry_run=dry_run)
    if dry_run:
        headline = _headline(report)
        if settings.output == "json":
            doc = {"headline": headline, **doc}
        else:
            click.echo(f"# {headline}")
    _emit(settings, doc)
    _echo_problems(report, delete_limit=fleet.policies.delete_limit)
    if not report.ok:
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_CHANGES if exit_code and _changes(report) else EXIT_OK)


def _add_sink_counts(doc: dict[str, Any], sinks: wiring.Sinks, *, dry_run: bool) -> None:
    """What the sinks did, in the report: files changed (not on a dry run), API writes and
    requests, objects drifted per cluster, restarts still owed."""
    git_sink, kube_sink = sinks.git, sinks.kube
    if git_sink is not None and not dry_run:
        doc["summary"]["filesChanged"] = git_sink.files_changed
    if kube_sink is not None:
        doc["summary"]["apiWrites"] = kube_sink.writes
        doc["summary"]["apiRequests"] = kube_sink.requests
        drifted = {name: n for name, n in sorted(kube_sink.drifted.items()) if n}
        if drifted:
            doc["drifted"] = drifted
        if pending := kube_sink.restarts.pending():
            doc["restartsPending"] = pending


def _echo_problems(report: CycleReport, *, delete_limit: DeleteLimit) -> None:
    """A line on stderr per failed object, failed cluster and cluster with deletes held."""
    for item in report.failures:
        click.echo(f"failed: {item.cluster} {item.namespace}/{item.name}: {item.reason}", err=True)
    for name, reason in report.failed_clusters.items():
        click.echo(f"failed: cluster {name}: {reason}", err=True)
    for name, items in report.held_by_cluster().items():
        click.echo(
            f"held: {len(items)} deletes on {name}: over the delete limit "
            f"({delete_limit}); nothing was deleted there "
            "(--allow-deletes lifts the limit for one run)",
            err=True,
        )


def _output_repo(
    settings: Settings, out: str | None, fleet: Fleet, author: str, signing_key: str | None
) -> Any:
    """`render --commit`: the output folder's repository, checked clean before rendering."""
    from secretsync.fleet import gitsource
    from secretsync.writeback.repo import open_clean

    out_dir = Path(out) if out else fleet.root / fleet.output_dir
    try:
        key = Path(signing_key) if signing_key else None
        return asyncio.run(open_clean(out_dir, author=author, env=settings.env, signing_key=key))
    except errors.ConfigError as exc:
        _fail_config(exc)
    except gitsource.GitError as exc:
        raise UsageError(f"--commit: {exc}") from None


def _commit(repo: Any, report: CycleReport) -> dict[str, Any] | None:
    """One commit of what the render changed (None when nothing did)."""
    from secretsync.fleet import gitsource
    from secretsync.writeback.commit import cycle_name

    try:
        done = asyncio.run(repo.commit(report, cycle=cycle_name("render")))
    except (errors.ConfigError, gitsource.GitError) as exc:
        click.echo(f"commit failed: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if done is None:
        return None
    return {"sha": done.sha, "objects": len(done.items), "files": len(done.paths)}


@click.command()
@click.argument("fleet", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: Fleet's).")
@_cluster_option
@_selector_option
@_check_refs_option
@_allow_deletes_option
@click.option("-v", "--verbose", is_flag=True, help="List unchanged objects too.")
@click.option(
    "--commit",
    is_flag=True,
    help="Commit exactly the changed files of the output folder on the current branch (no "
    "commit when nothing changed; exit 2 when the work tree already has changes).",
)
@_author_option
@_signing_option
@_vault_address_option
@pass_settings
def render(
    settings: Settings,
    fleet: str,
    out: str | None,
    cluster: tuple[str, ...],
    selector: str | None,
    check_refs: bool,
    allow_deletes: bool,
    verbose: bool,
    commit: bool,
    git_author: str,
    git_signing_key: str | None,
    vault_address: str | None,
) -> None:
    """Resolve values and write SealedSecret / ExternalSecret manifests per cluster.

    Files go to OUT/<cluster>/<namespace>/<name>.yaml with a kustomization.yaml per cluster.
    Unchanged values keep their ciphertext; `direct` clusters get nothing in Git.
    """
    if git_signing_key and not commit:
        raise UsageError("--git-signing-key signs the commit of --commit: give --commit too")
    _run(
        settings,
        fleet,
        out=out,
        cluster=cluster,
        selector=selector,
        dry_run=False,
        verbose=verbose,
        check_refs=check_refs,
        commit_as=git_author if commit else None,
        signing_key=git_signing_key,
        allow_deletes=allow_deletes,
        vault_address=vault_address,
    )


@click.command()
@click.argument("fleet", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: Fleet's).")
@_cluster_option
@_selector_option
@click.option("--live", is_flag=True, help="Also plan against the clusters' APIs (direct, apply).")
@_check_refs_option
@_timeout_option
@_home_option
@_plugins_option
@_allow_deletes_option
@click.option(
    "--exit-code",
    is_flag=True,
    help="Exit 3 when something would change, 0 when nothing would (1 and 2 keep their meaning).",
)
@click.option("-v", "--verbose", is_flag=True, help="List unchanged objects too.")
@_vault_address_option
@pass_settings
def plan(
    settings: Settings,
    fleet: str,
    out: str | None,
    cluster: tuple[str, ...],
    selector: str | None,
    live: bool,
    check_refs: bool,
    cluster_timeout: float,
    home_kubeconfig: str | None,
    exec_plugins: tuple[str, ...],
    allow_deletes: bool,
    exit_code: bool,
    verbose: bool,
    vault_address: str | None,
) -> None:
    """Show what `render` (and with --live, `sync`) would change: objects and keys, no values.

    The first line sums it up for the fleet. Deletes over the Fleet's deleteLimit show as
    `held` (exit 1), as `render` / `sync` would hold them, unless --allow-deletes is given.
    """
    _run(
        settings,
        fleet,
        out=out,
        cluster=cluster,
        selector=selector,
        dry_run=True,
        verbose=verbose,
        kube=live,
        home_kubeconfig=home_kubeconfig,
        exec_plugins=exec_plugins,
        cluster_timeout=cluster_timeout,
        check_refs=check_refs,
        allow_deletes=allow_deletes,
        exit_code=exit_code,
        vault_address=vault_address,
    )


@click.command()
@click.argument("fleet", type=click.Path(file_okay=False))
@_cluster_option
@_selector_option
@click.option("--dry-run", is_flag=True, help="Compare with the live clusters; write nothing.")
@_timeout_option
@_home_option
@_plugins_option
@_allow_deletes_option
@click.option("-v", "--verbose", is_flag=True, help="List unchanged objects too.")
@_vault_address_option
@pass_settings
def sync(
    settings: Settings,
    fleet: str,
    cluster: tuple[str, ...],
    selector: str | None,
    dry_run: bool,
    cluster_timeout: float,
    home_kubeconfig: str | None,
    exec_plugins: tuple[str, ...],
    allow_deletes: bool,
    verbose: bool,
    vault_address: str | None,
) -> None:
    """Reconcile every cluster once through its Kubernetes API.

    `direct` clusters get plain Secrets; `sealed` / `external` clusters with `apply: true`
    get their SealedSecrets / ExternalSecrets. Only changed objects are written (server-side
    apply, field manager `secretsync`); hand edits are repaired; owned objects no longer
    desired are pruned; objects secretsync does not own are never touched.
    """
    _run(
        settings,
        fleet,
        cluster=cluster,
        selector=selector,
        dry_run=dry_run,
        verbose=verbose,
        git=False,
        kube=True,
        home_kubeconfig=home_kubeconfig,
        exec_plugins=exec_plugins,
        cluster_timeout=cluster_timeout,
        allow_deletes=allow_deletes,
        vault_address=vault_address,
    )

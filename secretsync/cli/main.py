"""The `secretsync` command line: thin commands over the engine, the loader and the sealer.

The only place (with the daemon) that reads the environment and argv. Output is YAML by
default, JSON with `-o json`. Exit codes: 0 done, 1 done but some items failed (each named),
2 bad input or usage. Values never come from argv in examples; nothing prompts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import yaml

from secretsync import __version__
from secretsync.app import logs, runtime
from secretsync.core import errors, selectors
from secretsync.core.model import ANNOTATION_CLUSTER, Delivery, Fleet, Scope, Selector, SopsSettings
from secretsync.core.values import SecretValue
from secretsync.delivery import seal
from secretsync.delivery.materialize import dump_yaml
from secretsync.engine.cycle import CycleReport, Engine, ItemResult, select_clusters
from secretsync.fleet import load, scan
from secretsync.kube import kubeplugins
from secretsync.sinks.git import GitSink
from secretsync.sources import vaultaddress
from secretsync.sources.resolve import Source

if TYPE_CHECKING:
    from secretsync.daemon.service import DaemonSettings
    from secretsync.daemon.sharding import ElectionSettings

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


def build_sources(
    fleet: Fleet, env: Mapping[str, str], *, vault_address: str | None = None
) -> dict[str, Source]:
    """The sources the fleet configures (every registered kind's), by `Location.source_key`.
    `vault_address` is the operator's (`--vault-address`): it wins over the Fleet's."""
    from secretsync.sources import kinds

    return kinds.build_sources(fleet, kinds.BuildOptions(env=env, vault_address=vault_address))


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


# --- validate --------------------------------------------------------------------------------


@main_group.command()
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
    for cluster in loaded.clusters.values():
        if cluster.cert_file is None:
            continue
        if cluster.controller is not None and not (loaded.root / cluster.cert_file).exists():
            ref = cluster.controller
            click.echo(
                f"note: cluster {cluster.name}: no {cluster.cert_file} yet; `secretsync cluster "
                f"refresh-cert {cluster.name}` fetches it from {ref.namespace}/{ref.name}",
                err=True,
            )
            continue
        try:
            pem = load.read_fleet_file(loaded.root, cluster.cert_file)
            seal.load_certificate(pem, source=cluster.cert_file, now=now)
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


# --- render / plan ---------------------------------------------------------------------------


def _hmac_or_random(settings: Settings) -> bytes:
    if settings.hmac_key is not None:
        return settings.hmac_key
    log.warning(
        "SECRETSYNC_HMAC_KEY is not set: a random key is used, so every object looks changed "
        "on every run (set it to keep unchanged values byte-identical and writes at zero)"
    )
    return secrets.token_bytes(32)


def _item_doc(item: ItemResult) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "object": f"{item.namespace}/{item.name}",
        "fleetSecret": item.fleet_secret,
        "action": item.action,
    }
    keys = {
        k: list(v)
        for k, v in (
            ("added", item.keys.added),
            ("changed", item.keys.changed),
            ("removed", item.keys.removed),
        )
        if v
    }
    if keys:
        doc["keys"] = keys
    if item.versions:
        doc["sources"] = list(item.versions)
    if item.version_changes:
        doc["versionChanges"] = list(item.version_changes)
    if item.reason:
        doc["reason"] = item.reason
    return doc


def _report_doc(report: CycleReport, *, verbose: bool) -> dict[str, Any]:
    clusters: dict[str, list[dict[str, Any]]] = {}
    counts = _counts(report)
    for item in report.items:
        if verbose or item.action != "unchanged":
            clusters.setdefault(item.cluster, []).append(_item_doc(item))
    doc: dict[str, Any] = {
        "clusters": clusters,
        "summary": {
            "created": counts["create"],
            "updated": counts["update"],
            "deleted": counts["delete"],
            "deletesHeld": counts["held"],
            "unchanged": counts["unchanged"],
            "failed": counts["failed"],
            "sourceReads": report.reads,
            "seals": report.seals,
        },
    }
    if report.failed_clusters:
        doc["failedClusters"] = report.failed_clusters
    return doc


def _counts(report: CycleReport) -> dict[str, int]:
    counts = dict.fromkeys(("create", "update", "delete", "held", "unchanged", "failed"), 0)
    for item in report.items:
        counts[item.action] = counts.get(item.action, 0) + 1
    return counts


def _headline(report: CycleReport) -> str:
    """One line for a whole plan: what would change, on how many clusters."""
    counts = _counts(report)
    changing = {
        i.cluster for i in report.items if i.action in ("create", "update", "delete", "held")
    }
    return (
        f"would create {counts['create']}, update {counts['update']}, delete "
        f"{counts['delete']} objects on {len(changing)} clusters; {counts['held']} deletes held"
    )


def _changes(report: CycleReport) -> bool:
    return any(i.action in ("create", "update", "delete", "held") for i in report.items)


def _check_filters(fleet: Fleet, cluster: tuple[str, ...], sel: Selector | None) -> None:
    """`--cluster` / `--selector` that name nothing are usage errors, as with `seal`: a typo in
    a filter must not pass for "nothing to do"."""
    unknown = [n for n in cluster if n not in fleet.clusters]
    if unknown:
        raise UsageError(f"--cluster: unknown cluster(s): {', '.join(unknown)}")
    if (cluster or sel is not None) and not select_clusters(fleet, names=cluster, selector=sel):
        raise UsageError("--selector: no cluster of the fleet matches")


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
    sinks: list[Any] = []
    git_sink = kube_sink = None
    if git:
        if out:  # the operator's own path
            git_sink = GitSink(out_dir=Path(out))
        else:
            git_sink = GitSink(out_dir=fleet.root / fleet.output_dir, repo=fleet.root)
        sinks.append(git_sink)
    if kube:
        from secretsync.kube.clusters import ClientFactory
        from secretsync.sinks.kube import KubeSink

        plugins = _plugin_policy(settings, exec_plugins)
        factory = ClientFactory(
            root=fleet.root, home=_home_client(home_kubeconfig, plugins), plugins=plugins
        )
        kube_sink = KubeSink(clients=factory, hmac_key=key)
        sinks.append(kube_sink)
    try:
        sources = build_sources(fleet, settings.env, vault_address=vault_address)
    except errors.ConfigError as exc:
        _fail_config(exc)
    engine = Engine(
        sources=sources,
        sinks=sinks,
        hmac_key=key,
        clock=lambda: datetime.now(UTC),
        cluster_timeout_s=cluster_timeout,
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
            if kube_sink is not None:
                await kube_sink.aclose()

    try:
        report = asyncio.run(go())
    except errors.ConfigError as exc:
        _fail_config(exc)
    committed = _commit(repo, report) if repo is not None else None
    doc = _report_doc(report, verbose=verbose)
    if repo is not None:
        doc["commit"] = committed
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
    if dry_run:
        headline = _headline(report)
        if settings.output == "json":
            doc = {"headline": headline, **doc}
        else:
            click.echo(f"# {headline}")
    _emit(settings, doc)
    for item in report.failures:
        click.echo(f"failed: {item.cluster} {item.namespace}/{item.name}: {item.reason}", err=True)
    for name, reason in report.failed_clusters.items():
        click.echo(f"failed: cluster {name}: {reason}", err=True)
    for name, items in report.held_by_cluster().items():
        click.echo(
            f"held: {len(items)} deletes on {name}: over the delete limit "
            f"({fleet.policies.delete_limit}); nothing was deleted there "
            "(--allow-deletes lifts the limit for one run)",
            err=True,
        )
    if not report.ok:
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_CHANGES if exit_code and _changes(report) else EXIT_OK)


def _output_repo(
    settings: Settings, out: str | None, fleet: Fleet, author: str, signing_key: str | None
) -> Any:
    """`render --commit`: the output folder's repository, checked clean before rendering."""
    from secretsync.fleet import gitsource
    from secretsync.sinks import writeback

    out_dir = Path(out) if out else fleet.root / fleet.output_dir
    try:
        key = Path(signing_key) if signing_key else None
        return asyncio.run(
            writeback.open_clean(out_dir, author=author, env=settings.env, signing_key=key)
        )
    except errors.ConfigError as exc:
        _fail_config(exc)
    except gitsource.GitError as exc:
        raise UsageError(f"--commit: {exc}") from None


def _commit(repo: Any, report: CycleReport) -> dict[str, Any] | None:
    """One commit of what the render changed (None when nothing did)."""
    from secretsync.fleet import gitsource
    from secretsync.sinks import writeback

    try:
        done = asyncio.run(repo.commit(report, cycle=writeback.cycle_name("render")))
    except (errors.ConfigError, gitsource.GitError) as exc:
        click.echo(f"commit failed: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if done is None:
        return None
    return {"sha": done.sha, "objects": len(done.items), "files": len(done.paths)}


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


@main_group.command()
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


@main_group.command()
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


@main_group.command()
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


# --- serve -----------------------------------------------------------------------------------


def _election(
    settings: Settings,
    *,
    shards: int,
    shard_index: int | None,
    leader_elect: bool | None,
    home_kubeconfig: str | None,
    namespace: str | None,
    lease_duration: float,
) -> ElectionSettings | None:
    """The election settings of `serve`, or None for a single replica without Leases."""
    env = settings.env
    if leader_elect is None:
        leader_elect = shards > 1 or bool(home_kubeconfig or env.get("KUBERNETES_SERVICE_HOST"))
    if not leader_elect:
        if shards > 1:
            raise UsageError("--shards > 1 needs leader election (drop --no-leader-elect)")
        return None
    from secretsync.daemon import sharding
    from secretsync.kube import leases

    try:
        index = (
            sharding.derive_shard_index(explicit=shard_index, env=env)
            if shards > 1 or shard_index is not None
            else 0
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if index is None:
        if shards > 1:
            raise UsageError(
                "--shards > 1: give --shard-index, $SECRETSYNC_SHARD_INDEX or a pod name "
                "ending in the StatefulSet ordinal"
            )
        index = 0
    if index >= shards:
        raise UsageError(f"shard index {index} is not below --shards {shards}")
    if not home_kubeconfig and not env.get("KUBERNETES_SERVICE_HOST"):
        raise UsageError(
            "leader election needs the home cluster: give --home-kubeconfig or run in a pod"
        )
    return sharding.ElectionSettings(
        shards=shards,
        shard_index=index,
        namespace=namespace or leases.home_namespace(),
        identity=leases.process_identity(env),
        timing=leases.LeaseTiming(
            lease_duration_s=lease_duration,
            renew_deadline_s=lease_duration * 2 / 3,
            retry_period_s=lease_duration * 2 / 15,
        ),
    )


def _pull_and_poll_options[F: Callable[..., Any]](command: F) -> F:
    """`serve`'s options for a fleet repo pulled from Git and for the KV v2 version poll."""
    for option in reversed(
        [
            click.option(
                "--poll-interval",
                type=click.FloatRange(min=1),
                metavar="SECONDS",
                help="Poll the KV v2 metadata versions of the Vault paths in use this often; "
                "a new version triggers a narrowed cycle, as a webhook does (default: off).",
            ),
            click.option(
                "--git-url",
                envvar="SECRETSYNC_GIT_URL",
                help="Pull the fleet repo from this Git URL into FLEET before every cycle.",
            ),
            click.option(
                "--git-branch",
                envvar="SECRETSYNC_GIT_BRANCH",
                help="Branch of --git-url (default: main).",
            ),
            click.option(
                "--git-credentials-file",
                envvar="SECRETSYNC_GIT_CREDENTIALS_FILE",
                type=click.Path(dir_okay=False),
                help="A .git-credentials file (https://USER:TOKEN@HOST lines), e.g. a "
                "mounted Secret; read by a credential helper, never put on an argv.",
            ),
        ]
    ):
        command = option(command)
    return command


def _with_pull_and_poll(
    options: DaemonSettings,
    *,
    poll_interval: float | None,
    git_url: str | None,
    git_branch: str | None,
    git_credentials_file: str | None,
) -> DaemonSettings:
    from secretsync.fleet import gitsource

    if git_url is None:
        if git_branch or git_credentials_file:
            raise UsageError("--git-branch and --git-credentials-file need --git-url")
        return dataclasses.replace(options, poll_interval_s=poll_interval)
    try:
        url = gitsource.check_url(git_url)
        branch = gitsource.check_branch(git_branch or "main")
    except errors.ConfigError as exc:
        raise UsageError(exc.render()) from None
    return dataclasses.replace(
        options,
        poll_interval_s=poll_interval,
        git_url=url,
        git_branch=branch,
        git_credentials_file=Path(git_credentials_file) if git_credentials_file else None,
    )


def _push_options[F: Callable[..., Any]](command: F) -> F:
    """`serve`'s options for committing and pushing the output folder (`writeback`)."""
    for option in reversed(
        [
            click.option(
                "--git-push",
                is_flag=True,
                envvar="SECRETSYNC_GIT_PUSH",
                help="After a cycle that changed files, commit them and push to the branch "
                "pulled (never with force; needs --git-url).",
            ),
            click.option(
                "--git-push-branch",
                envvar="SECRETSYNC_GIT_PUSH_BRANCH",
                help="Push to this branch of the same remote instead (one GitOps tools watch).",
            ),
            click.option(
                "--cert-refresh-interval",
                type=click.FloatRange(min=0),
                default=86400.0,
                show_default=True,
                metavar="SECONDS",
                help="With --git-push: fetch the sealing certificate of each cluster that names "
                "sealedSecrets.controller this often, and commit a renewed one (and its pin) with "
                "the re-sealed files; 0: off.",
            ),
        ]
    ):
        command = option(command)
    return command


def _with_push(
    options: DaemonSettings,
    *,
    push: bool,
    branch: str | None,
    author: str,
    key: str | None,
    cert_refresh_s: float | None,
) -> DaemonSettings:
    from secretsync.fleet import gitsource
    from secretsync.sinks import writeback

    if not push:
        if branch or key:
            raise UsageError("--git-push-branch and --git-signing-key need --git-push")
        return options
    if options.git_url is None:
        raise UsageError("--git-push needs --git-url: the daemon pushes to the repo it pulls")
    if not options.git:
        raise UsageError("--git-push needs the Git sink (drop --no-git)")
    try:
        settings = writeback.PushSettings(
            branch=gitsource.check_branch(branch) if branch else None,
            author=writeback.Author.parse(author),
            signing_key=Path(key).absolute() if key else None,
            cert_refresh_s=cert_refresh_s,
            home_kubeconfig=options.home_kubeconfig,
        )
    except errors.ConfigError as exc:
        raise UsageError(exc.render()) from None
    return dataclasses.replace(options, push=settings)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen takes HOST:PORT, not {text!r}")
    return host, int(port)


@main_group.command()
@click.argument("fleet", type=click.Path(file_okay=False))
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT")
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds between full reconciles (with 10% jitter).",
)
@click.option("--git/--no-git", default=True, show_default=True, help="Render into the output dir.")
@click.option("--kube/--no-kube", default=True, show_default=True, help="Deliver through APIs.")
@click.option(
    "--max-body",
    type=click.IntRange(min=1024, max=16 * 1024 * 1024),
    default=64 * 1024,
    show_default=True,
    help="Largest webhook body in bytes (bigger: 413).",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1, max=3600),
    default=10.0,
    show_default=True,
    help="Seconds a client has for a request line and headers (and a webhook for its body); "
    "then the connection is dropped.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1, max=86400),
    default=60.0,
    show_default=True,
    help="Seconds a connection may stay silent between requests before it is closed.",
)
@_timeout_option
@_home_option
@_plugins_option
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Replicas the clusters are split across (stable hash of the cluster name).",
)
@click.option(
    "--shard-index",
    type=click.IntRange(min=0),
    help="This replica's shard (default: $SECRETSYNC_SHARD_INDEX, else the pod ordinal).",
)
@click.option(
    "--leader-elect/--no-leader-elect",
    default=None,
    help="Hold Leases on the home cluster (default: on with --shards > 1, --home-kubeconfig "
    "or in a pod).",
)
@click.option(
    "--lease-namespace",
    envvar="SECRETSYNC_LEASE_NAMESPACE",
    help="Namespace of the Leases (default: the pod's, else `default`).",
)
@click.option(
    "--lease-duration",
    type=click.FloatRange(min=3),
    default=15.0,
    show_default=True,
    help="Seconds a Lease lasts without renewal (renewed every 2/15 of it).",
)
@click.option(
    "--events/--no-events",
    default=None,
    help="Post Kubernetes Events (failures, held deletes, expiring certificates, refused "
    "commits) to the home cluster (default: on with --home-kubeconfig or in a pod).",
)
@_pull_and_poll_options
@_push_options
@_author_option
@_signing_option
@_vault_address_option
@click.option(
    "--api-token-file",
    type=click.Path(dir_okay=False),
    help="Require a bearer token from this file (one a line) on /v1/status, / and /metrics; "
    "the file is read again when it changes.",
)
@click.option(
    "--api-auth",
    type=click.Choice(["none", "kubernetes"]),
    default="none",
    show_default=True,
    help="kubernetes: require a bearer token that a TokenReview on the home cluster accepts and "
    "whose user may `get` the path (SubjectAccessReview, nonResourceURLs).",
)
@click.option(
    "--peer",
    "peer_urls",
    multiple=True,
    metavar="URL",
    help="Another replica's base URL (repeatable; also $SECRETSYNC_PEERS, comma-separated): "
    "each verified webhook is forwarded to it, signed with the same secret. A URL naming this "
    "host ($HOSTNAME, or HOSTNAME.<domain>) is skipped, so every replica can get one list.",
)
@pass_settings
def serve(
    settings: Settings,
    fleet: str,
    listen: str,
    interval: float,
    git: bool,
    kube: bool,
    max_body: int,
    header_timeout: float,
    idle_timeout: float,
    cluster_timeout: float,
    home_kubeconfig: str | None,
    exec_plugins: tuple[str, ...],
    shards: int,
    shard_index: int | None,
    leader_elect: bool | None,
    lease_namespace: str | None,
    lease_duration: float,
    events: bool | None,
    poll_interval: float | None,
    git_url: str | None,
    git_branch: str | None,
    git_credentials_file: str | None,
    git_push: bool,
    git_push_branch: str | None,
    cert_refresh_interval: float,
    git_author: str,
    git_signing_key: str | None,
    vault_address: str | None,
    api_token_file: str | None,
    api_auth: str,
    peer_urls: tuple[str, ...],
) -> None:
    """Run the daemon: reconcile at start and every --interval, serve /healthz, /readyz,
    /metrics, /v1/status, the fleet page at / and the signed rotation webhook
    POST /v1/webhooks/vault (key from $SECRETSYNC_WEBHOOK_SECRET). Stops on SIGTERM.

    FLEET is the fleet repo folder; with --git-url, the working folder the daemon clones the
    branch into and pulls before every cycle (a commit that does not load is refused)."""
    from secretsync.daemon import service, webhook

    if not git and not kube:
        raise UsageError("--no-git and --no-kube leave nothing to deliver to")
    host, port = _listen(listen)
    if api_token_file:
        from secretsync.daemon import apiauth

        try:
            apiauth.TokenFile(Path(api_token_file))  # refused now rather than at first request
        except apiauth.ApiError as exc:
            raise UsageError(f"--api-token-file: {exc}") from None
    secret = settings.env.get("SECRETSYNC_WEBHOOK_SECRET")
    try:
        webhook_key = webhook.parse_secret(secret) if secret else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = service.DaemonSettings(
        fleet_path=Path(fleet),
        hmac_key=_hmac_or_random(settings),
        env=settings.env,
        host=host,
        port=port,
        interval_s=interval,
        git=git,
        kube=kube,
        webhook_key=webhook_key,
        max_body=max_body,
        header_timeout_s=header_timeout,
        idle_timeout_s=idle_timeout,
        cluster_timeout_s=cluster_timeout,
        home_kubeconfig=home_kubeconfig,
        plugins=_plugin_policy(settings, exec_plugins),
        api_token_file=Path(api_token_file) if api_token_file else None,
        api_auth_kubernetes=api_auth == "kubernetes",
        peers=_peers(settings, peer_urls, webhook_key=webhook_key),
        election=_election(
            settings,
            shards=shards,
            shard_index=shard_index,
            leader_elect=leader_elect,
            home_kubeconfig=home_kubeconfig,
            namespace=lease_namespace,
            lease_duration=lease_duration,
        ),
        events=_events_on(settings, events=events, home_kubeconfig=home_kubeconfig),
    )
    options = _with_pull_and_poll(
        options,
        poll_interval=poll_interval,
        git_url=git_url,
        git_branch=git_branch,
        git_credentials_file=git_credentials_file,
    )
    options = _with_push(
        options,
        push=git_push,
        branch=git_push_branch,
        author=git_author,
        key=git_signing_key,
        cert_refresh_s=cert_refresh_interval or None,
    )
    try:
        code = service.run(
            options, make_sources=functools.partial(build_sources, vault_address=vault_address)
        )
    except errors.DeliveryError as exc:  # the home cluster of the Leases is unusable
        raise UsageError(f"leader election: {exc}") from None
    except OSError as exc:
        click.echo(f"serve: cannot listen on {listen}: {exc.strerror}", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(code)


def _peers(
    settings: Settings, urls: tuple[str, ...], *, webhook_key: bytes | None
) -> tuple[str, ...]:
    """`--peer` (else `$SECRETSYNC_PEERS`), checked, without this host's own URL."""
    from secretsync.daemon import peers

    given = list(urls) or [
        u for u in settings.env.get("SECRETSYNC_PEERS", "").split(",") if u.strip()
    ]
    try:
        checked = [peers.check_peer(u) for u in given]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if checked and webhook_key is None:
        raise UsageError("--peer needs SECRETSYNC_WEBHOOK_SECRET: forwarded webhooks are signed")
    return peers.others(checked, hostname=settings.env.get("HOSTNAME", ""))


def _events_on(settings: Settings, *, events: bool | None, home_kubeconfig: str | None) -> bool:
    """`--events`, defaulting to on when there is a home cluster to post them to."""
    home = bool(home_kubeconfig or settings.env.get("KUBERNETES_SERVICE_HOST"))
    if events and not home:
        raise UsageError("--events needs the home cluster: give --home-kubeconfig or run in a pod")
    return home if events is None else events


# --- seal ------------------------------------------------------------------------------------


def _read_values(
    literals: tuple[str, ...], files: tuple[str, ...], stdin_key: str | None
) -> dict[str, SecretValue]:
    values: dict[str, SecretValue] = {}

    def put(key: str, value: SecretValue, flag: str) -> None:
        if problem := load.secret_key_problem(key):
            raise UsageError(f"{flag}: {key!r}: {problem}")
        if key in values:
            raise UsageError(f"{flag}: key {key!r} given twice")
        values[key] = value

    for item in literals:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError("--from-literal takes KEY=VALUE")
        put(key, SecretValue.of(text), "--from-literal")
    for item in files:
        key, sep, path = item.partition("=")
        if not sep:
            raise UsageError("--from-file takes KEY=PATH")
        try:
            put(key, SecretValue(Path(path).read_bytes()), "--from-file")
        except OSError as exc:
            raise UsageError(f"--from-file: cannot read {path}: {exc.strerror}") from None
    if stdin_key is not None:
        put(stdin_key, SecretValue(sys.stdin.buffer.read()), "--from-stdin")
    if not values:
        raise UsageError("give at least one of --from-literal, --from-file or --from-stdin")
    return values


@main_group.command("seal")
@click.option("-f", "--fleet", "fleet_path", required=True, type=click.Path(file_okay=False))
@_cluster_option
@_selector_option
@click.option("--namespace", required=True)
@click.option("--name", required=True)
@click.option("--from-literal", "literals", multiple=True, metavar="KEY=VALUE")
@click.option("--from-file", "files", multiple=True, metavar="KEY=PATH")
@click.option("--from-stdin", "stdin_key", metavar="KEY", help="Read one value from stdin.")
@click.option(
    "--scope",
    type=click.Choice([s.value for s in Scope]),
    default=Scope.STRICT.value,
    show_default=True,
)
@click.option("--type", "secret_type", default="Opaque", show_default=True)
@click.option("--raw", is_flag=True, help="Print only the sealed values.")
@click.option(
    "--merge-into",
    type=click.Path(dir_okay=False),
    help="Merge into this file of SealedSecrets (one per cluster) and rewrite it in place.",
)
@pass_settings
def seal_command(
    settings: Settings,
    fleet_path: str,
    cluster: tuple[str, ...],
    selector: str | None,
    namespace: str,
    name: str,
    literals: tuple[str, ...],
    files: tuple[str, ...],
    stdin_key: str | None,
    scope: str,
    secret_type: str,
    raw: bool,
    merge_into: str | None,
) -> None:
    """Seal values for many clusters at once, each with its own certificate.

    Prints one SealedSecret per matching cluster (multi-document YAML), each annotated with
    its cluster. Values come from files or stdin; prefer those over --from-literal.
    """
    from secretsync.delivery import fleetseal

    if not cluster and selector is None:
        raise UsageError("give --cluster NAME (repeatable) or --selector SELECTOR")
    if not load.is_dns_label(namespace):
        raise UsageError(f"--namespace: {namespace!r} is not a namespace name (a DNS label)")
    if not load.is_dns_subdomain(name):
        raise UsageError(f"--name: {name!r} is not a Secret name (a DNS subdomain)")
    fleet = _load(fleet_path)
    values = _read_values(literals, files, stdin_key)
    try:
        result = fleetseal.seal_for_clusters(
            fleet,
            names=cluster,
            selector=_selector(selector),
            namespace=namespace,
            name=name,
            values=values,
            scope=Scope(scope),
            secret_type=secret_type,
            now=datetime.now(UTC),
        )
    except errors.ConfigError as exc:
        _fail_config(exc)
    if merge_into:
        try:
            fleetseal.merge_into(Path(merge_into), result.manifests, scope=Scope(scope))
        except errors.ConfigError as exc:
            _fail_config(exc)
        click.echo(f"merged {len(result.manifests)} cluster(s) into {merge_into}", err=True)
    elif raw:
        encrypted = {
            m["metadata"]["annotations"][ANNOTATION_CLUSTER]: m["spec"]["encryptedData"]
            for m in result.manifests
        }
        if len(encrypted) == 1 and len(values) == 1:
            click.echo(next(iter(next(iter(encrypted.values())).values())), nl=False)
        else:
            _emit(settings, encrypted)
    elif settings.output == "json":
        _emit(settings, {"apiVersion": "v1", "kind": "List", "items": result.manifests})
    else:
        click.echo(
            "".join("---\n" + dump_yaml(m).decode("utf-8") for m in result.manifests), nl=False
        )
    for cluster_name, reason in result.failures.items():
        click.echo(f"failed: cluster {cluster_name}: {reason}", err=True)
    sys.exit(EXIT_FAILED if result.failures else EXIT_OK)


# --- cluster ---------------------------------------------------------------------------------


@main_group.group("cluster")
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
@click.option("--delivery", type=click.Choice([d.value for d in Delivery]))
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
    chosen = Delivery(delivery) if delivery else fleet.default_delivery
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
    ref = cluster.controller or ControllerRef()
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
    from secretsync.kube.clusters import ClientFactory
    from secretsync.sinks.kube import KubeSink

    fleet = _load(fleet_path)
    cluster = fleet.clusters.get(name)
    if cluster is None:
        raise UsageError(f"unknown cluster {name!r}")
    git = GitSink(out_dir=fleet.root / fleet.output_dir, repo=fleet.root)
    kube = None
    if cluster.kubeconfig is not None:
        plugins = _plugin_policy(settings, exec_plugins)
        factory = ClientFactory(
            root=fleet.root, home=_home_client(home_kubeconfig, plugins), plugins=plugins
        )
        kube = KubeSink(clients=factory, hmac_key=settings.hmac_key or b"")

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


# --- unseal ----------------------------------------------------------------------------------


@main_group.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--private-key",
    "key_files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="PEM private key of the sealing controller (repeatable).",
)
@click.option("--show-values", is_flag=True, help="Print values; otherwise only which keys open.")
@pass_settings
def unseal(settings: Settings, file: str, key_files: tuple[str, ...], show_values: bool) -> None:
    """Check SealedSecrets offline with the controller's private key(s) (recovery, audits)."""
    keys = []
    for key_file in key_files:
        try:
            keys.extend(seal.load_private_keys(Path(key_file).read_bytes(), source=key_file))
        except (OSError, errors.SealError) as exc:
            raise UsageError(f"--private-key {key_file}: {exc}") from None
    try:
        docs = list(yaml.load_all(Path(file).read_bytes(), Loader=yaml.CSafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{file}: cannot read SealedSecrets ({type(exc).__name__})") from None
    out: list[dict[str, Any]] = []
    failed = False
    for index, doc in enumerate(docs):  # `index` counts every document of the file, from 0
        if not doc:
            continue
        meta = _mapping(doc, "metadata")
        entry: dict[str, Any] = {
            "index": index,
            "cluster": _mapping(meta, "annotations").get(ANNOTATION_CLUSTER),
            "object": f"{meta.get('namespace')}/{meta.get('name')}",
        }
        try:
            opened = seal.unseal_manifest(doc, keys)
            entry["keys"] = (
                {k: v.decode("utf-8", "backslashreplace") for k, v in opened.items()}
                if show_values
                else sorted(opened)
            )
        except errors.SealError as exc:
            entry["error"] = str(exc)
            failed = True
        out.append(entry)
    _emit(settings, out)
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


def _mapping(node: object, key: str) -> dict[str, Any]:
    value = node.get(key) if isinstance(node, dict) else None
    return value if isinstance(value, dict) else {}


# --- scan ------------------------------------------------------------------------------------


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


@main_group.command("scan")
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


def main() -> None:
    main_group(prog_name="secretsync")

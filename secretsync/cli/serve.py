"""`serve`: its options checked into DaemonSettings, then the daemon."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from secretsync.cli.common import (
    EXIT_FAILED,
    Settings,
    UsageError,
    _author_option,
    _hmac_or_random,
    _home_option,
    _plugin_policy,
    _plugins_option,
    _signing_option,
    _timeout_option,
    _vault_address_option,
    pass_settings,
)
from secretsync.core import errors

if TYPE_CHECKING:
    from secretsync.daemon.settings import DaemonSettings
    from secretsync.daemon.sharding import ElectionSettings


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
    from secretsync.writeback.commit import Author
    from secretsync.writeback.push import PushSettings

    if not push:
        if branch or key:
            raise UsageError("--git-push-branch and --git-signing-key need --git-push")
        return options
    if options.git_url is None:
        raise UsageError("--git-push needs --git-url: the daemon pushes to the repo it pulls")
    if not options.git:
        raise UsageError("--git-push needs the Git sink (drop --no-git)")
    try:
        settings = PushSettings(
            branch=gitsource.check_branch(branch) if branch else None,
            author=Author.parse(author),
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


@click.command()
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
    from secretsync.daemon.settings import DaemonSettings

    if not git and not kube:
        raise UsageError("--no-git and --no-kube leave nothing to deliver to")
    host, port = _listen(listen)
    if api_token_file:
        _check_token_file(api_token_file)
    webhook_key = _webhook_key(settings)
    options = DaemonSettings(
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
        vault_address=vault_address,
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
    _run(options, listen=listen)


def _check_token_file(path: str) -> None:
    """`--api-token-file`, refused now rather than at the first request."""
    from secretsync.daemon import apiauth

    try:
        apiauth.TokenFile(Path(path))
    except apiauth.ApiError as exc:
        raise UsageError(f"--api-token-file: {exc}") from None


def _webhook_key(settings: Settings) -> bytes | None:
    """The webhook key from `$SECRETSYNC_WEBHOOK_SECRET`; None without one."""
    from secretsync.daemon import webhook

    secret = settings.env.get("SECRETSYNC_WEBHOOK_SECRET")
    try:
        return webhook.parse_secret(secret) if secret else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _run(options: DaemonSettings, *, listen: str) -> NoReturn:
    """Run the daemon until it stops; exit with its code."""
    from secretsync.daemon import process

    try:
        code = process.run(options)
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

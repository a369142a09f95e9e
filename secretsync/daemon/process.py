"""The `serve` process: the Daemon with its Leases, Events and status API checks, run until told to
stop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from secretsync.daemon.service import Daemon
from secretsync.daemon.settings import DaemonSettings
from secretsync.kube import events

if TYPE_CHECKING:  # the election needs the kubernetes client: imported only when it is on
    from secretsync.daemon.sharding import Coordinator
    from secretsync.kube.clusters import Endpoint

log = logging.getLogger(__name__)


def run(settings: DaemonSettings) -> int:
    """Run the daemon until it is told to stop; the exit code."""
    log.info(
        "serving fleet %s: interval %.0f s, sinks %s, webhook %s, body cap %d bytes",
        settings.fleet_path,
        settings.interval_s,
        "+".join(n for n, on in (("git", settings.git), ("kube", settings.kube)) if on),
        "configured" if settings.webhook_key else "off (no SECRETSYNC_WEBHOOK_SECRET)",
        settings.max_body,
    )
    if settings.peers:
        log.info(
            "webhooks forwarded to %d peer(s): %s", len(settings.peers), " ".join(settings.peers)
        )
    daemon = Daemon(
        settings=settings,
        coordinator=_coordinator(settings),
        recorder=_recorder(settings),
    )
    asyncio.run(daemon.serve())
    return 0


def _coordinator(settings: DaemonSettings) -> Coordinator | None:
    """The Leases of this replica, on the home cluster; None with election off."""
    if settings.election is None:
        return None
    from secretsync.daemon import sharding  # noqa: PLC0415 - kubernetes only when needed

    api = _home_endpoint(settings)
    e = settings.election
    log.info(
        "leader election on: identity %s, namespace %s, shard %d of %d",
        e.identity,
        e.namespace,
        e.shard_index,
        e.shards,
    )
    return sharding.Coordinator(api=api, settings=e)


def _home_endpoint(settings: DaemonSettings) -> Endpoint:
    """The home cluster's API: `--home-kubeconfig`, else this pod's service account."""
    from secretsync.kube import clusters  # noqa: PLC0415 - kubernetes only when needed

    home = settings.home_kubeconfig
    return (
        clusters.endpoint_from_file(Path(home), plugins=settings.plugins)
        if home
        else clusters.in_cluster_endpoint()
    )


def _recorder(settings: DaemonSettings) -> events.Events | None:
    """Events on the home cluster, about this pod (else this replica's shard Lease)."""
    if not settings.events:
        return None
    from secretsync.kube import leases  # noqa: PLC0415 - kubernetes only when needed

    e = settings.election
    namespace = e.namespace if e is not None else leases.home_namespace()
    involved = events.involved_object(
        settings.env, namespace=namespace, shard_index=e.shard_index if e is not None else 0
    )
    log.info("Events on: about %s %s/%s", involved.kind, involved.namespace, involved.name)
    host = settings.env.get("NODE_NAME", "")
    return events.EventRecorder(
        api=_home_endpoint(settings), correlator=events.Correlator(involved=involved, host=host)
    )

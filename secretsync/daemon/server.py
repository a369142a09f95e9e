"""The HTTP side of `serve`, put together from the daemon's settings: the aiohttp app with the
status API's token guard (`apiauth`), the forwarder of verified webhooks to peer replicas
(`peers`) and the fleet-wide view across shards (`fleetview`), closed together when the daemon
stops. The handlers are `web`'s; the listeners and their deadlines are `edge`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web as aiohttp_web

from secretsync.daemon import apiauth, edge, fleetview, peers, web
from secretsync.daemon.settings import DaemonSettings

if TYPE_CHECKING:  # the election needs the kubernetes client: imported only when it is on
    from secretsync.daemon.sharding import Coordinator


@dataclass(frozen=True, slots=True, kw_only=True)
class Surface:
    """The app to serve, the limits of its connections, and what closes with it."""

    app: aiohttp_web.Application
    limits: edge.Limits
    forwarder: peers.Forwarder | None
    view: fleetview.FleetView | None

    async def aclose(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.aclose()
        if self.view is not None:
            await self.view.aclose()


def build(
    backend: web.Backend, *, settings: DaemonSettings, coordinator: Coordinator | None
) -> Surface:
    """The HTTP surface of a daemon (`backend`) with these settings."""
    s = settings
    forwarder = (
        peers.Forwarder(peers=s.peers, key=s.webhook_key, count=backend.metrics.forward)
        if s.peers and s.webhook_key
        else None
    )
    view = fleet_view(backend, settings=s, coordinator=coordinator)
    app = web.make_app(
        backend,
        max_body=s.max_body,
        read_timeout_s=s.header_timeout_s,
        guard=guard(s),
        forwarder=forwarder,
        view=view,
    )
    limits = edge.Limits(header_timeout_s=s.header_timeout_s, idle_timeout_s=s.idle_timeout_s)
    return Surface(app=app, limits=limits, forwarder=forwarder, view=view)


def fleet_view(
    backend: web.Backend, *, settings: DaemonSettings, coordinator: Coordinator | None
) -> fleetview.FleetView | None:
    """The fleet-wide status across shards (`fleetview`); None for a single shard, whose
    board is the fleet's."""
    s = settings
    if coordinator is None or coordinator.settings.shards < 2:
        return None
    return fleetview.FleetView(
        board=backend.board,
        peer_urls=s.peers,
        key=s.webhook_key,
        shards=coordinator.settings.shards,
        shard_index=coordinator.settings.shard_index,
        shard_of=coordinator.shard_for,
        count=backend.metrics.peer_status,
    )


def guard(settings: DaemonSettings) -> apiauth.Guard | None:
    """The status API's token checks; None when it is open. With peers, their status requests
    carry a peer token (`peers`), checked first."""
    checks: list[apiauth.Check] = []
    if settings.api_token_file is not None:
        checks.append(apiauth.TokenFile(settings.api_token_file))
    if settings.api_auth_kubernetes:
        api = apiauth.home_api(settings.home_kubeconfig, settings.plugins)
        checks.append(apiauth.KubernetesReview(api))
    if checks and settings.peers and settings.webhook_key:
        checks.insert(0, peers.PeerTokens(settings.webhook_key))
    return apiauth.Guard(checks) if checks else None

"""The daemon's HTTP surface (aiohttp): health, readiness, metrics, status, the fleet page and
the rotation webhook. Handlers only read the status board and hand webhook paths to the
`Backend` (the daemon); they never do cycle work themselves and never echo a request body.

- `GET /healthz`: 200 while the process serves.
- `GET /readyz`: 200 when the fleet repo is loaded and no source is unreachable, else 503;
  the body says which check failed.
- `GET /metrics`: Prometheus text. `GET /v1/status`: the JSON inventory, filtered and paged
  with a query (`statusquery`); `GET /v1/status/summary`: counts for dashboards.
- `GET /`: the fleet page, server-rendered HTML with a little inline JavaScript for filters
  (`fleetpage`).
- With shards and a `FleetView`, those three show the whole fleet (`?scope=fleet`, the
  default) or this replica's shard (`?scope=local`, what peers fetch); see `fleetview`.
- `POST /v1/webhooks/vault`: 503 without a webhook secret; 413 over the size cap (checked
  before the body is read); 408 when the body has not arrived within the read timeout (the
  connection is closed); 401 for a missing or bad signature or a stale timestamp; 400 for a
  bad body; 200 for a replayed id (no work); 202 once queued (and, with peers, forwarded to
  them in the background unless it came from one: `peers`). Refusals are logged at most once
  a minute per source address, with the count since that address's previous line (`edge`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from secretsync.daemon import apiauth, edge, fleetpage, fleetview, peers, statusquery, webhook
from secretsync.daemon.metrics import CONTENT_TYPE, Metrics
from secretsync.daemon.status import StatusBoard

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """What the web layer needs from the daemon."""

    @property
    def board(self) -> StatusBoard: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def verifier(self) -> webhook.Verifier | None: ...

    def readiness(self) -> Readiness: ...

    def submit(self, paths: tuple[str, ...]) -> tuple[int, int]:
        """Queue rotated paths for a narrowed cycle: (paths in use and queued, paths ignored)."""
        ...


BACKEND = web.AppKey("backend", Backend)
MAX_BODY = web.AppKey("max_body", int)
READ_TIMEOUT = web.AppKey("read_timeout_s", float)
REFUSALS = web.AppKey("refusals", edge.Throttle)
FORWARDER = web.AppKey("forwarder", peers.Forwarder)
VIEW = web.AppKey("fleet_view", fleetview.FleetView)


def make_app(
    backend: Backend,
    *,
    max_body: int = webhook.MAX_BODY_BYTES,
    read_timeout_s: float = edge.HEADER_TIMEOUT_S,
    refusals: edge.Throttle | None = None,
    guard: apiauth.Guard | None = None,
    forwarder: peers.Forwarder | None = None,
    view: fleetview.FleetView | None = None,
) -> web.Application:
    middlewares = [edge.track_requests] + ([guard.middleware] if guard else [])
    app = web.Application(client_max_size=max_body + 1, middlewares=middlewares)
    app[BACKEND] = backend
    app[MAX_BODY] = max_body
    app[READ_TIMEOUT] = read_timeout_s
    app[REFUSALS] = refusals or edge.Throttle()
    if forwarder is not None:
        app[FORWARDER] = forwarder
    if view is not None:
        app[VIEW] = view
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/status/summary", status_summary)
    app.router.add_get("/", page)
    app.router.add_post("/v1/webhooks/vault", vault_webhook)
    return app


def _json(doc: Any, *, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[BACKEND].readiness()
    return _json({"ready": state.ready, "checks": state.checks}, status=200 if state.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    backend.metrics.set_objects(backend.board.counts())
    return web.Response(body=backend.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def _board(request: web.Request) -> StatusBoard:
    """The board `?scope=` asks for: this replica's, its shard's, or the whole fleet's."""
    scopes = request.query.getall("scope", [])
    if len(scopes) > 1:
        raise statusquery.QueryError("parameter 'scope' given more than once")
    scope = scopes[0] if scopes else "fleet"
    if scope not in fleetview.SCOPES:
        raise statusquery.QueryError(
            f"parameter 'scope': {scope[:20]!r} is not one of {', '.join(fleetview.SCOPES)}"
        )
    view = request.app.get(VIEW)
    if view is None:  # one replica: its board is the fleet's
        return request.app[BACKEND].board
    return view.local() if scope == "local" else await view.fleet()


async def status(request: web.Request) -> web.Response:
    params = {name: request.query.getall(name) for name in request.query if name != "scope"}
    try:
        board = await _board(request)
        if not params:  # the whole inventory, as before paging (see statusquery)
            return _json(board.document())
        return _json(statusquery.page(board, statusquery.parse(params)))
    except statusquery.QueryError as exc:
        return _json({"error": exc.message}, status=exc.status)


async def status_summary(request: web.Request) -> web.Response:
    try:
        board = await _board(request)
    except statusquery.QueryError as exc:
        return _json({"error": exc.message}, status=exc.status)
    return _json(statusquery.summary(board))


async def page(request: web.Request) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    try:
        board = await _board(request)
    except statusquery.QueryError as exc:
        return _json({"error": exc.message}, status=exc.status)
    body = fleetpage.render_page(board, nonce=nonce)
    return web.Response(
        text=body,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
        },
    )


async def vault_webhook(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    verifier = backend.verifier
    if verifier is None:
        backend.metrics.webhook("unconfigured")
        return _json({"error": "no webhook secret configured"}, status=503)
    cap = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > cap:
        return _refused(request, webhook.TooLarge(f"body over {cap} bytes"))
    seconds = request.app[READ_TIMEOUT]
    try:
        async with asyncio.timeout(seconds):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refused(request, webhook.TooLarge(f"body over {cap} bytes"))
    except TimeoutError:
        return _refused(request, SlowBody(f"body not received within {seconds:g} s"))
    try:
        verified = verifier.verify(request.headers, body)
    except webhook.WebhookError as exc:
        return _refused(request, exc)
    if verified.replay:
        backend.metrics.webhook("duplicate")
        log.info("webhook %s: replayed id, acknowledged without work", verified.msg_id)
        return _json({"status": "duplicate"})
    queued, ignored = backend.submit(verified.paths)
    backend.metrics.webhook("accepted")
    forwarded = request.headers.get(peers.FORWARDED_HEADER) == "1"
    log.info(
        "webhook %s%s: %d path(s) queued, %d not used by the fleet",
        verified.msg_id,
        " (forwarded by a peer)" if forwarded else "",
        queued,
        ignored,
    )
    forwarder = request.app.get(FORWARDER)
    if forwarder is not None and not forwarded:  # a forwarded one is never sent on: no loops
        forwarder.forward(verified.msg_id, verified.paths)
    return _json({"status": "queued", "queued": queued, "ignored": ignored}, status=202)


class SlowBody(webhook.WebhookError):
    status = 408


_OUTCOME = {401: "unauthorized", 400: "bad_request", 408: "timeout", 413: "too_large"}


def _refused(request: web.Request, exc: webhook.WebhookError) -> web.Response:
    """The refusal's answer; counted in metrics every time, logged at most once a minute per
    source address (a flood of bad signatures costs one line a minute, with its count)."""
    request.app[BACKEND].metrics.webhook(_OUTCOME.get(exc.status, "refused"))
    address = request.remote or "unknown"
    count = request.app[REFUSALS].hit(address)
    if count is not None:
        log.info(
            "webhook refused (%d) from %s: %s [%d from this address since its last line]",
            exc.status,
            address,
            exc.message,
            count,
            extra={"source": address, "count": count},
        )
    response = _json({"error": exc.message}, status=exc.status)
    if isinstance(exc, SlowBody):
        response.force_close()  # the rest of a slow body is not waited for
    return response

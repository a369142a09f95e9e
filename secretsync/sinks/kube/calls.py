"""The Kubernetes sink's API calls: one request, and a call with the cluster's rate limit and
retries."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from secretsync.core.model import Cluster, ObjectKey
from secretsync.delivery.direct import direct_hasher
from secretsync.kube.clusters import ClientFactory
from secretsync.net.ratelimit import TokenBucket
from secretsync.net.retry import Backoff
from secretsync.sinks.kube.kinds import ApiError, _describe
from secretsync.sinks.restarts import Restarts

log = logging.getLogger(__name__)


class KubeCalls:
    """The Kubernetes sink's API calls: one request, and a call with the cluster's rate limit and
    retries."""

    def __init__(
        self,
        *,
        clients: ClientFactory,
        hmac_key: bytes,
        request_timeout_s: float = 15.0,
        concurrency: int = 8,
        max_attempts: int = 4,
        backoff_s: float = 0.5,
        requests_per_second: float = 100.0,
        observe_concurrency: int = 16,
        list_page: int = 500,
        restart_wait_s: float = 10.0,
        restart_poll_s: float = 0.5,
    ) -> None:
        self.clients = clients
        self.hmac_key = hmac_key
        self._hasher = direct_hasher(hmac_key)
        self.request_timeout_s = request_timeout_s
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.requests_per_second = requests_per_second
        self._limits: dict[tuple[int, str], TokenBucket] = {}
        self.backoff_s = backoff_s
        self._backoff = Backoff(base_s=backoff_s)
        self._uids: dict[ObjectKey, str] = {}
        self.requests = 0
        self.writes = 0
        self.drifted: dict[str, int] = {}
        # Clusters listed at once (per event loop). A list of 1,000 Secrets is ~1.5 MB of JSON
        # and as much again as Observed objects; with a hundred clusters answering together
        # while the client is busy comparing one of them, every answer would wait in memory.
        self.observe_concurrency = observe_concurrency
        self.list_page = list_page  # objects per list request (`limit`, then `continue`)
        self.restarts = Restarts()
        # how long the cluster's last batch waits for a controller to write the Secrets that
        # restarts wait on; past it the restart stays owed and the next cycle looks again
        self.restart_wait_s = restart_wait_s
        self.restart_poll_s = restart_poll_s
        # per cluster being worked on: the engine's mark of an answer (see `Sink.progress`)
        self._progress: dict[str, Callable[[], None]] = {}
        self._observing: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def aclose(self) -> None:
        """Close the connection pools opened on the running loop (they are closed anyway when
        the loop shuts down)."""
        await self.clients.aclose()

    async def _request(
        self,
        cluster: Cluster,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: object = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> tuple[int, dict[str, Any] | None, Mapping[str, str]]:
        endpoint = await self.clients.for_cluster(cluster)
        self.requests += 1
        status, raw, headers = await endpoint.request(
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            accept=accept,
            timeout_s=self.request_timeout_s,
        )
        if status == 0:
            log.debug("%s %s on %s: unreachable", method, path, cluster.name)
        doc: dict[str, Any] | None = None
        if raw:
            try:
                parsed = json.loads(raw)
                doc = parsed if isinstance(parsed, dict) else None
            except ValueError:
                doc = None
        return status, doc, headers

    async def _call(
        self,
        cluster: Cluster,
        method: str,
        path: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200, 201),
        **kwargs: Any,
    ) -> tuple[int, dict[str, Any] | None]:
        """One API call with retries; returns (status, body) for statuses in `ok` or 404/409,
        raises ApiError otherwise."""
        loop = asyncio.get_running_loop()
        limit = self._limits.get((id(loop), cluster.name))
        if limit is None:
            # a token bucket per cluster: keeps secretsync under the API server's limits instead
            # of finding them with 429s; a 429 that comes anyway holds every request to that
            # cluster until the time it names
            rate = self.requests_per_second
            limit = self._limits[(id(loop), cluster.name)] = TokenBucket(
                rate=rate, burst=max(1.0, rate)
            )
        attempt = throttled = 0
        while True:
            await limit.take()
            status, doc, headers = await self._request(cluster, method, path, **kwargs)
            if status in ok or status in (404, 409):
                if (mark := self._progress.get(cluster.name)) is not None:
                    mark()
                return status, doc
            retryable = status in (0, 429) or status >= 500
            # 429 says "later", not "broken": it gets a larger budget (the cluster's timeout
            # still bounds the whole)
            if status == 429:
                throttled += 1
            else:
                attempt += 1
            if not retryable or attempt >= self.max_attempts or throttled >= 4 * self.max_attempts:
                raise ApiError(
                    _describe(status, doc, what=what, cluster=cluster.name), status=status
                )
            wait = self._backoff.wait(attempt + throttled)
            if status == 429:
                retry_after = headers.get("Retry-After") or ""
                wait = float(retry_after) if retry_after.isdigit() else wait
            log.debug(
                "%s %s on %s: HTTP %s, retrying in %.1fs", method, what, cluster.name, status, wait
            )
            if status == 429:
                # the cluster is throttling us, not this request: all requests to it wait
                limit.hold(wait)
            else:
                await asyncio.sleep(wait)

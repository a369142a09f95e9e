"""Kubernetes Events of the daemon: what failed, what is held back, what is about to expire,
posted to the home cluster where `kubectl describe` and `kubectl get events` show them.

- `core/v1` Events (not `events.k8s.io/v1`): both are one stored resource, but `core/v1` is
  what `kubectl describe` and `--field-selector involvedObject.name=` read, and its
  `count` / `lastTimestamp` are how a repeated condition is shown (the newer API's `series`
  says the same with more ceremony and no gain here).
- The involved object is the daemon's Pod (`POD_NAME` / `POD_NAMESPACE` / `POD_UID` from the
  downward API); outside a pod it is this replica's shard Lease `secretsync-shard-<I>` in the
  Lease namespace, a stable name that exists whenever leader election is on.
- Correlation follows client-go's event recorder: the same (reason, involved object,
  message) within `DEDUP_WINDOW_S` PATCHes the existing Event's `count` and `lastTimestamp`
  instead of creating one more; then a token bucket per reason (burst 25, one token per
  5 minutes, client-go's spam filter numbers) drops what exceeds it, so a flood of failures
  makes at most 25 Events and cannot starve the other reasons.
- Best effort: `emit` never blocks and never raises. Posts go through a bounded queue to one
  worker with a short timeout; a full queue drops (counted), a failing API server is logged
  once (and once more when it answers again) and never slows a cycle.
- Messages carry names, counts, dates and the daemon's reason texts (which never hold a
  value), on one line, at most 1 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from secretsync.net.ratelimit import TokenBucket

if TYPE_CHECKING:
    from secretsync.kube.clusters import Endpoint

log = logging.getLogger(__name__)

SYNC_FAILED: Final = "SecretSyncFailed"
DELETES_HELD: Final = "DeletesHeld"
CERTIFICATE_EXPIRING: Final = "CertificateExpiring"
FLEET_REFUSED: Final = "FleetRefused"

COMPONENT: Final = "secretsync"
MAX_MESSAGE_BYTES: Final = 1024  # the API server itself refuses messages over 1 MiB in total
DEDUP_WINDOW_S: Final = 3600.0  # the API server's default --event-ttl: older Events are gone
CACHE_SIZE: Final = 4096  # client-go's LRU size for its de-duplication cache
BURST: Final = 25  # client-go's spam filter: burst 25 ...
REFILL_S: Final = 300.0  # ... and one more every 5 minutes
QUEUE_SIZE: Final = 256
TIMEOUT_S: Final = 2.0  # per request: a paused API server costs the worker this, never a cycle


def message_of(text: str) -> str:
    """One line, at most `MAX_MESSAGE_BYTES` of UTF-8 (cut on a character boundary)."""
    line = " ".join(text.split())
    raw = line.encode("utf-8")
    if len(raw) <= MAX_MESSAGE_BYTES:
        return line
    return raw[: MAX_MESSAGE_BYTES - 3].decode("utf-8", errors="ignore") + "..."


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectRef:
    """The object Events are about (`involvedObject`)."""

    kind: str
    api_version: str
    namespace: str
    name: str
    uid: str = ""

    def document(self) -> dict[str, str]:
        doc = {
            "kind": self.kind,
            "apiVersion": self.api_version,
            "namespace": self.namespace,
            "name": self.name,
        }
        if self.uid:
            doc["uid"] = self.uid
        return doc


def involved_object(env: Mapping[str, str], *, namespace: str, shard_index: int = 0) -> ObjectRef:
    """The daemon's Pod when the downward API names it, else its shard Lease."""
    pod, pod_namespace = env.get("POD_NAME", ""), env.get("POD_NAMESPACE", "")
    if pod and pod_namespace:
        return ObjectRef(
            kind="Pod",
            api_version="v1",
            namespace=pod_namespace,
            name=pod,
            uid=env.get("POD_UID", ""),
        )
    return ObjectRef(
        kind="Lease",
        api_version="coordination.k8s.io/v1",
        namespace=namespace,
        name=f"secretsync-shard-{shard_index}",
    )


@dataclass(slots=True)
class _Seen:
    name: str
    count: int
    first: datetime
    last_s: float  # monotonic


@dataclass(frozen=True, slots=True)
class Post:
    """One request to make: create Event `name` (with `count`), or bump its count."""

    name: str
    patch: bool
    body: dict[str, Any] = field(repr=False)


class Correlator:
    """De-duplication and rate limiting, with clocks given (no request made here)."""

    def __init__(
        self,
        *,
        involved: ObjectRef,
        host: str = "",
        burst: int = BURST,
        refill_s: float = REFILL_S,
        window_s: float = DEDUP_WINDOW_S,
        cache_size: int = CACHE_SIZE,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.involved = involved
        self.host = host
        self._burst, self._refill_s = burst, refill_s
        self._window_s = window_s
        self._cache_size = cache_size
        self._wall = wall_clock
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], _Seen] = OrderedDict()
        self._buckets: dict[str, TokenBucket] = {}
        self.limited = 0  # Events dropped by the rate limit
        self._stamp = 0

    def correlate(self, reason: str, message: str) -> Post | None:
        """The request for one occurrence, or None when the rate limit drops it (its count
        is still kept, so the next one that passes carries the true count)."""
        message = message_of(message)
        now_s, now = self._clock(), self._wall()
        key = (reason, message)
        seen = self._seen.get(key)
        if seen is not None and now_s - seen.last_s <= self._window_s:
            seen.count += 1
            seen.last_s = now_s
            self._seen.move_to_end(key)
            patch = True
        else:
            # nanoseconds, as client-go names Events; kept increasing so that two Events made
            # in the same tick (a clock's resolution) never share a name
            stamp = self._stamp = max(int(now.timestamp() * 1e9), self._stamp + 1)
            seen = _Seen(name=f"{self.involved.name}.{stamp:x}", count=1, first=now, last_s=now_s)
            self._seen[key] = seen
            self._seen.move_to_end(key)
            while len(self._seen) > self._cache_size:
                self._seen.popitem(last=False)
            patch = False
        bucket = self._buckets.get(reason)
        if bucket is None:
            bucket = self._buckets[reason] = TokenBucket(
                rate=1 / self._refill_s, burst=self._burst, clock=self._clock
            )
        if not bucket.try_take():
            self.limited += 1
            return None
        return Post(name=seen.name, patch=patch, body=self._body(reason, message, seen, now))

    def _body(self, reason: str, message: str, seen: _Seen, now: datetime) -> dict[str, Any]:
        stamp = _format(now)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": seen.name, "namespace": self.involved.namespace},
            "involvedObject": self.involved.document(),
            "reason": reason,
            "message": message,
            "type": "Warning",
            "source": {"component": COMPONENT, **({"host": self.host} if self.host else {})},
            "firstTimestamp": _format(seen.first),
            "lastTimestamp": stamp,
            "count": seen.count,
            "reportingComponent": COMPONENT,
            "reportingInstance": self.host or self.involved.name,
        }


def _format(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Events:
    """What the daemon reports; this base reports nothing (Events off)."""

    def emit(self, reason: str, message: str) -> None:
        """Record one occurrence; never blocks, never raises."""

    def counted_by(self, count: Callable[[str], None]) -> None:
        """Report each outcome (created, patched, failed, dropped, limited) to `count`."""

    async def aclose(self) -> None:
        """Post what is queued (briefly) and stop."""

    # --- the daemon's conditions -------------------------------------------------------------

    def object_failed(self, cluster: str, namespace: str, name: str, reason: str) -> None:
        self.emit(SYNC_FAILED, f"cluster {cluster}: {namespace}/{name}: {reason}")

    def cluster_failed(self, cluster: str, reason: str) -> None:
        self.emit(SYNC_FAILED, f"cluster {cluster}: {reason}")

    def deletes_held(self, cluster: str, count: int) -> None:
        self.emit(
            DELETES_HELD,
            f"cluster {cluster}: {count} deletes held: over the delete limit "
            "(see /v1/status deletesHeld)",
        )

    def certificate_expiring(self, cluster: str, not_after: str, *, expired: bool) -> None:
        state = "expired" if expired else "expires"
        self.emit(
            CERTIFICATE_EXPIRING,
            f"cluster {cluster}: sealing certificate {state} {not_after}: "
            f"run `secretsync cluster refresh-cert {cluster}`",
        )

    def certificates(
        self, expiry: Mapping[str, datetime], *, now: datetime, warn_days: int
    ) -> None:
        """A `CertificateExpiring` for each sealing certificate within `warn_days` of expiry
        (or past it): the same message every cycle, so one Event counts them."""
        for cluster, at in sorted(expiry.items()):
            if at - now <= timedelta(days=warn_days):
                self.certificate_expiring(cluster, _format(at), expired=at <= now)

    def fleet_refused(self, commit: str | None, error: str) -> None:
        first = error.strip().splitlines()[0] if error.strip() else "refused"
        what = f"commit {commit}" if commit else "fleet repo"
        self.emit(FLEET_REFUSED, f"{what} refused, the last good one stays: {first}")


class EventRecorder(Events):
    """Events posted to the home cluster by one background worker (see the module text)."""

    def __init__(
        self,
        *,
        api: Endpoint,
        correlator: Correlator,
        queue_size: int = QUEUE_SIZE,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.api = api
        self.correlator = correlator
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[Post] = asyncio.Queue(maxsize=queue_size)
        self._worker: asyncio.Task[None] | None = None
        self._failing = False
        self.outcomes = dict.fromkeys(("created", "patched", "failed", "dropped", "limited"), 0)
        self._count: Callable[[str], None] = lambda outcome: None

    @property
    def limited(self) -> int:
        return self.correlator.limited

    def counted_by(self, count: Callable[[str], None]) -> None:
        self._count = count

    def _counted(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self._count(outcome)

    def emit(self, reason: str, message: str) -> None:
        post = self.correlator.correlate(reason, message)
        if post is None:
            self._counted("limited")
            return
        try:
            self._queue.put_nowait(post)
        except asyncio.QueueFull:
            self._counted("dropped")
            return
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="secretsync-events"
            )

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued Event was posted (or failed); False at the deadline."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        await self.drain(self.timeout_s)
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        await self.api.aclose()  # the recorder's own connection pool

    async def _work(self) -> None:
        while True:
            post = await self._queue.get()
            try:
                ok = await self._send(post)
            except Exception:  # best effort: never let one Event end the worker
                log.exception("posting an Event failed")
                ok = False
            finally:
                self._queue.task_done()
            self._outcome(ok)

    def _outcome(self, ok: bool) -> None:
        if not ok:
            self._counted("failed")
            if not self._failing:
                self._failing = True
                log.warning(
                    "cannot post Events to the home cluster; they are dropped until it answers"
                )
        elif self._failing:
            self._failing = False
            log.info("posting Events to the home cluster again")

    def _path(self, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{self.correlator.involved.namespace}/events"
        return f"{base}/{name}" if name else base

    async def _send(self, post: Post) -> bool:
        if post.patch:
            patch = {
                "count": post.body["count"],
                "lastTimestamp": post.body["lastTimestamp"],
                "message": post.body["message"],
            }
            status, _, _ = await self.api.request(
                "PATCH",
                self._path(post.name),
                body=patch,
                content_type="application/merge-patch+json",
                timeout_s=self.timeout_s,
            )
            if status == 200:
                self._counted("patched")
                return True
            if status != 404:  # 404: the Event expired (or was never posted): create it anew
                return False
        status, _, _ = await self.api.request(
            "POST", self._path(), body=post.body, timeout_s=self.timeout_s
        )
        if status in (200, 201):
            self._counted("created")
            return True
        return False

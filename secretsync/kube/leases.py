"""Leader election on a `coordination.k8s.io/v1` Lease of the home cluster.

The semantics are those of Kubernetes' own leader election, no home-made consensus:

- A Lease that is absent, released (no `holderIdentity`) or expired
  (`renewTime + leaseDurationSeconds < now`) is taken: created, or replaced with the
  `resourceVersion` that was read, so of two contenders the API server lets exactly one win
  (the other gets 409 Conflict / AlreadyExists and stays a follower).
- The holder renews every `retry_period_s`. Leadership is only claimed until
  `renew_deadline_s` after the start of the last successful renew (monotonic clock): a holder
  that cannot renew in time stops leading at once, before the Lease can expire for others
  (`renew_deadline_s < lease_duration_s`).
- `release()` (graceful stop) clears `holderIdentity`, so a follower takes over on its next try
  instead of after expiry.
- A `fence` (optional) is asked before a Lease is taken and again right after: a reason not to
  hold it (another replica's Lease that covers the same objects, see `sharding`). Before, the
  Lease is not taken; after (two took theirs at the same moment and at least one of them sees
  the other), it is released at once and leadership is never claimed. The Lease's `annotations`
  say what its holder works under (e.g. the shard count), for other replicas' fences.

Requests go through the home cluster's `clusters.Endpoint`; errors name the Lease and the HTTP
status, never a response body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from secretsync.kube.clusters import Endpoint

log = logging.getLogger(__name__)

GROUP_PATH: Final = "/apis/coordination.k8s.io/v1"
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def process_identity(env: Mapping[str, str] | None = None) -> str:
    """A per-process holder identity: the pod name (hostname) and a random suffix."""
    env = os.environ if env is None else env
    pod = env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname() or "secretsync"
    return f"{pod}_{secrets.token_hex(4)}"


def home_namespace(default: str = "default") -> str:
    """The namespace the pod runs in (its service account's), else `default`."""
    try:
        with open(SA_NAMESPACE, encoding="utf-8") as fh:
            return fh.read().strip() or default
    except OSError:
        return default


def _format(at: datetime) -> str:
    """A Kubernetes MicroTime."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _expired(seen: _Observed, now: datetime) -> bool:
    """renewTime + leaseDurationSeconds < now (a Lease without renewTime has expired)."""
    return seen.renew is None or seen.renew + timedelta(seconds=seen.duration_s) < now


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseTiming:
    """Durations of one election, in seconds (Kubernetes defaults: 15 / 10 / 2)."""

    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("need 0 < retry period < renew deadline < lease duration")


@dataclass(frozen=True, slots=True)
class _Observed:
    """The Lease as last read: None when absent."""

    holder: str | None
    renew: datetime | None
    duration_s: float
    transitions: int
    acquire: datetime | None
    resource_version: str
    raw: dict[str, Any]


class LeaseError(Exception):
    """A Lease request failed (no response body in the message)."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One Lease of a namespace as listed: whether it is held now and its annotations."""

    name: str
    holder: str | None
    live: bool  # held, and renewed within its duration
    annotations: Mapping[str, str]


async def list_leases(
    api: Endpoint, namespace: str, *, now: datetime, timeout_s: float
) -> list[LeaseRecord]:
    """Every Lease of `namespace` (one LIST; needs `list` on leases there)."""
    status, raw, _ = await api.request(
        "GET", f"{GROUP_PATH}/namespaces/{namespace}/leases", timeout_s=timeout_s
    )
    if status != 200:
        raise LeaseError(f"listing Leases in {namespace}: HTTP {status or 'n/a'}")
    try:
        items = json.loads(raw)["items"] or []
        out = []
        for doc in items:
            meta, spec = doc["metadata"], doc.get("spec") or {}
            holder = spec.get("holderIdentity") or None
            renew = _parse(spec.get("renewTime"))
            duration = float(spec.get("leaseDurationSeconds") or 0)
            live = (
                holder is not None
                and renew is not None
                and renew + timedelta(seconds=duration) >= now  # as `_expired`, negated
            )
            annotations = meta.get("annotations") or {}
            out.append(
                LeaseRecord(
                    name=str(meta["name"]),
                    holder=holder,
                    live=live,
                    annotations={str(k): str(v) for k, v in annotations.items()},
                )
            )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LeaseError(f"listing Leases in {namespace}: not a Lease list") from None
    return out


class LeaseElector:
    """One contender for one Lease. `run()` until cancelled or `stop()`ped; `is_leader` says
    whether this process may act as the leader right now."""

    def __init__(
        self,
        *,
        api: Endpoint,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming | None = None,
        on_change: Callable[[str, bool], None] | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        annotations: Mapping[str, str] | None = None,
        fence: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.conflicts = 0  # 409s seen: someone else won a race
        self.attempts = 0  # election steps taken
        self._on_change = on_change
        self._now = wall_clock
        self.annotations = dict(annotations or {})
        self._fence = fence
        self.fenced: str | None = None  # why the Lease was not taken at the last try
        self._valid_until = 0.0  # monotonic time until which leadership may be claimed
        self._leading = False
        self._stop = asyncio.Event()
        self.stepped = asyncio.Event()  # set once the first election step has ended

    # --- state -----------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading and time.monotonic() < self._valid_until

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info(
                "%s Lease %s/%s as %s",
                "acquired" if leading else "lost",
                self.namespace,
                self.name,
                self.identity,
            )
            if self._on_change is not None:
                self._on_change(self.name, leading)
        if not leading:
            self._valid_until = 0.0

    # --- API -------------------------------------------------------------------------------------

    def _path(self, item: bool = True) -> str:
        base = f"{GROUP_PATH}/namespaces/{self.namespace}/leases"
        return f"{base}/{self.name}" if item else base

    async def _call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        timeout = max(1.0, self.timing.renew_deadline_s / 2)
        status, raw, _ = await self.api.request(method, path, body=body, timeout_s=timeout)
        return status, raw

    async def _read(self) -> _Observed | None:
        status, raw = await self._call("GET", self._path())
        if status == 404:
            return None
        if status != 200:
            raise LeaseError(f"reading Lease {self.namespace}/{self.name}: HTTP {status or 'n/a'}")
        try:
            doc = json.loads(raw)
            meta, spec = doc["metadata"], doc.get("spec") or {}
            return _Observed(
                holder=spec.get("holderIdentity") or None,
                renew=_parse(spec.get("renewTime")),
                duration_s=float(spec.get("leaseDurationSeconds") or 0),
                transitions=int(spec.get("leaseTransitions") or 0),
                acquire=_parse(spec.get("acquireTime")),
                resource_version=str(meta["resourceVersion"]),
                raw=doc,
            )
        except (ValueError, KeyError, TypeError):
            raise LeaseError(f"Lease {self.namespace}/{self.name} is not a Lease") from None

    async def _write(self, spec: dict[str, Any], seen: _Observed | None) -> bool:
        """Create or replace the Lease; False on a lost race (409)."""
        doc: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        if self.annotations:
            doc["metadata"]["annotations"] = dict(self.annotations)
        if seen is None:
            status, _ = await self._call("POST", self._path(item=False), doc)
        else:
            doc["metadata"]["resourceVersion"] = seen.resource_version
            status, _ = await self._call("PUT", self._path(), doc)
        if status == 409:
            self.conflicts += 1
            return False
        if status not in (200, 201):
            raise LeaseError(f"writing Lease {self.namespace}/{self.name}: HTTP {status or 'n/a'}")
        return True

    # --- one step --------------------------------------------------------------------------------

    async def try_acquire_or_renew(self) -> bool:
        """One election step: acquire or renew. Returns whether this process now leads; a
        failure keeps a leader leading until its renew deadline (then it lets go)."""
        started = time.monotonic()
        self.attempts += 1
        if self._leading and started >= self._valid_until:
            self._set_leading(False)  # the renew deadline passed: leadership lapsed (reported)
        try:
            won = await self._step()
        except LeaseError as exc:
            log.warning("%s", exc)
            if self._leading and time.monotonic() >= self._valid_until:
                self._set_leading(False)
            return self.is_leader
        deadline = started + self.timing.renew_deadline_s
        if won and time.monotonic() < deadline:
            self._valid_until = deadline
            self._set_leading(True)
        else:  # lost, or won too late to count on: the next step tries again
            self._set_leading(False)
        return self.is_leader

    async def _step(self) -> bool:
        seen = await self._read()
        now = self._now()
        if (
            seen is not None
            and seen.holder not in (None, self.identity)
            and not _expired(seen, now)
        ):
            return False  # held by someone else
        mine = seen is not None and seen.holder == self.identity
        if not mine and not await self._clear("not taken"):
            return False
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease_duration_s)),
            "renewTime": _format(now),
            "acquireTime": _format(seen.acquire if mine and seen and seen.acquire else now),
            "leaseTransitions": (seen.transitions if seen else 0) + (0 if mine else 1),
        }
        if seen is None:
            spec["leaseTransitions"] = 0
        won = await self._write(spec, seen)
        if won and not mine and not await self._clear("taken and released at once"):
            await self.release()  # another replica took a conflicting Lease at the same moment
            return False
        return won

    async def _clear(self, action: str) -> bool:
        """Whether the fence lets this process hold the Lease (logged when its answer changes)."""
        if self._fence is None:
            return True
        reason = await self._fence()
        if reason != self.fenced:
            if reason is not None:
                log.warning("Lease %s/%s %s: %s", self.namespace, self.name, action, reason)
            else:
                log.info("Lease %s/%s: the fence is clear", self.namespace, self.name)
        self.fenced = reason
        return reason is None

    # --- the loop --------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Contend and renew until `stop()` (or cancellation); leadership ends with it."""
        try:
            while not self._stop.is_set():
                await self.try_acquire_or_renew()
                self.stepped.set()
                wait = self.timing.retry_period_s
                if self.fenced is not None:  # two fenced contenders must not stay in step
                    wait *= 1 + random.random()  # noqa: S311 - timing jitter, not security
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._stop.wait()
        finally:
            self._set_leading(False)

    async def release(self) -> None:
        """Give the Lease up (graceful stop) so a follower takes over at once. Only a Lease this
        process holds (by the server's record) is touched; a failure is logged, and the Lease
        then simply expires."""
        self._set_leading(False)
        try:
            seen = await self._read()
            if seen is None or seen.holder != self.identity:
                return
            now = _format(self._now())
            spec = {
                "holderIdentity": None,
                "leaseDurationSeconds": 1,
                "renewTime": now,
                "acquireTime": now,
                "leaseTransitions": seen.transitions,
            }
            if await self._write(spec, seen):
                log.info("released Lease %s/%s", self.namespace, self.name)
        except LeaseError as exc:
            log.warning("release: %s", exc)

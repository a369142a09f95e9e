"""Forwarding of verified rotation webhooks to the other replicas (`serve --peer URL`).

A replica that accepts a signed webhook hands its normalised, de-duplicated paths to every
peer as a new Standard Webhooks request, signed with the same secret, so the clusters of every
shard see the rotation within seconds rather than at their next interval. The forwarded request
carries `secretsync-forwarded: 1`: its receiver queues it and does not forward it again (no
loops). Its id is derived from the original's (`fwd_` + a hash), so the receiver's replay cache
keeps it apart from the original, while a second forward of the same webhook is a replay.

Forwarding is fire-and-forget: a short timeout, at most `MAX_IN_FLIGHT` requests at once, never
awaited by the handler that answers the original sender. Every outcome is counted
(`secretsync_webhook_forwards_total{outcome=sent|failed}`); a failure is logged at most once a
minute per peer. A peer that missed one catches up on its next poll or interval cycle.

Requests for a peer's status (`fleetview`) carry a peer token instead of a caller's token:
`Authorization: Bearer ssp1.<unix seconds>.<nonce>.<MAC>`, the MAC an HMAC-SHA256 of
`ssp1.<seconds>.<nonce>.<path>` under a key derived from the webhook secret (so a webhook
signature is never a peer token, nor the other way round). `PeerTokens` accepts one for
`/v1/status` only, within `PEER_TOKEN_TOLERANCE_S` of its time, each nonce once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from secretsync.daemon import apiauth, edge, webhook

log = logging.getLogger(__name__)

FORWARDED_HEADER: Final = "secretsync-forwarded"
WEBHOOK_PATH: Final = "/v1/webhooks/vault"
TIMEOUT_S: Final = 3.0  # well inside the 5 s a rotation has to reach every shard
MAX_IN_FLIGHT: Final = 8
STATUS_PATH: Final = "/v1/status"
PEER_TOKEN_PREFIX: Final = "ssp1"
PEER_TOKEN_TOLERANCE_S: Final = 60  # the replicas' clocks are one cluster's (NTP)
MAX_SEEN_NONCES: Final = 100_000
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")


def forwarded_id(msg_id: str) -> str:
    """The id of the forwarded request: derived from the original (a replay of it forwards to
    the same id), distinct from it, and within the id length a receiver accepts."""
    return "fwd_" + hashlib.sha256(msg_id.encode()).hexdigest()[:32]


def _peer_key(key: bytes) -> bytes:
    """The key of peer tokens, derived from the webhook secret (domain separation)."""
    return hmac.new(key, b"secretsync peer requests v1", hashlib.sha256).digest()


def _mac(peer_key: bytes, stamp: str, nonce: str, path: str) -> str:
    text = f"{PEER_TOKEN_PREFIX}.{stamp}.{nonce}.{path}".encode()
    digest = hmac.new(peer_key, text, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def peer_token(key: bytes, *, path: str, now: float) -> str:
    """A bearer token for one request to a peer's `path` (a fresh nonce each time)."""
    stamp, nonce = str(int(now)), secrets.token_urlsafe(18)
    return f"{PEER_TOKEN_PREFIX}.{stamp}.{nonce}.{_mac(_peer_key(key), stamp, nonce, path)}"


class PeerTokens:
    """An `apiauth.Check`: accepts a peer token for `/v1/status` (once per nonce)."""

    def __init__(
        self,
        key: bytes,
        *,
        clock: Callable[[], float] = time.time,
        tolerance_s: float = PEER_TOKEN_TOLERANCE_S,
    ) -> None:
        self._key = _peer_key(key)
        self._clock = clock
        self._tolerance = tolerance_s
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> when it may be forgotten

    def __repr__(self) -> str:
        return "PeerTokens()"

    async def check(self, token: str, *, path: str) -> apiauth.Decision:
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != PEER_TOKEN_PREFIX:
            return apiauth.UNKNOWN  # not a peer token: another check's
        _, stamp, nonce, mac = parts
        if not stamp.isdigit() or not _NONCE.match(nonce):
            return apiauth.UNKNOWN
        if not hmac.compare_digest(mac, _mac(self._key, stamp, nonce, path)):
            return apiauth.UNKNOWN  # wrong key, or made for another path
        now = self._clock()
        if abs(now - int(stamp)) > self._tolerance:
            return apiauth.Decision(401, "peer token outside its time window")
        self._forget(now)
        if nonce in self._seen:
            return apiauth.Decision(401, "peer token used before")
        self._seen[nonce] = int(stamp) + self._tolerance
        if path != STATUS_PATH:  # a key holder's token for another path
            return apiauth.Decision(403, f"a peer token reads {STATUS_PATH} only")
        return apiauth.ALLOW

    def _forget(self, now: float) -> None:
        while self._seen and (
            len(self._seen) >= MAX_SEEN_NONCES or next(iter(self._seen.values())) < now
        ):
            self._seen.popitem(last=False)


def check_peer(url: str) -> str:
    """A peer's base URL (`http://host:port`), checked. Raises ValueError naming the URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--peer takes http(s)://HOST:PORT, not {url!r}")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"--peer takes a base URL without a path or query, not {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"--peer has a bad port: {url!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def ordinal(url: str) -> int | None:
    """The StatefulSet ordinal a peer URL names (`http://secretsync-2.secretsync-peers...` -> 2),
    else None: a peer's shard before it has answered."""
    label = (urlsplit(url).hostname or "").split(".", 1)[0]
    found = re.search(r"-([0-9]+)\Z", label)
    return int(found.group(1)) if found else None


def others(urls: Iterable[str], *, hostname: str) -> tuple[str, ...]:
    """`urls` without this replica's own: a peer whose host is `hostname` or starts with
    `hostname.` (a StatefulSet pod `<release>-N` named as `<release>-N.<release>-peers...`),
    so every replica of a chart can be given the same list. Duplicates dropped, order kept."""
    out: dict[str, None] = {}
    for url in urls:
        host = urlsplit(url).hostname or ""
        if hostname and (host == hostname or host.startswith(hostname + ".")):
            continue
        out[url] = None
    return tuple(out)


class Forwarder:
    """Sends verified paths to the peers; owns its HTTP session and its tasks."""

    def __init__(
        self,
        *,
        peers: tuple[str, ...],
        key: bytes,
        count: Callable[[str], None],
        timeout_s: float = TIMEOUT_S,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.peers = peers
        self._key = key
        self._count = count
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._clock = clock
        self._failures = edge.Throttle()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Forwarder(peers={self.peers!r})"

    def forward(self, msg_id: str, paths: tuple[str, ...]) -> None:
        """Start one request per peer and return at once (the caller answers its sender)."""
        if not paths:
            return
        body = json.dumps({"paths": list(paths)}).encode()
        fid = forwarded_id(msg_id)
        for peer in self.peers:
            task = asyncio.create_task(self._send(peer, fid, body), name="secretsync-forward")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, peer: str, msg_id: str, body: bytes) -> None:
        async with self._slots:
            stamp = int(self._clock())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": webhook.sign(self._key, msg_id, stamp, body),
                FORWARDED_HEADER: "1",
            }
            try:
                if self._session is None:
                    self._session = aiohttp.ClientSession(timeout=self._timeout)
                async with self._session.post(
                    peer + WEBHOOK_PATH, data=body, headers=headers
                ) as response:
                    await response.read()
                    ok = response.status in (200, 202)
                    reason = f"answered {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                ok = False
                reason = type(exc).__name__
                if isinstance(exc, aiohttp.ClientConnectorError):
                    reason = "connection refused or unreachable"
                elif isinstance(exc, TimeoutError):
                    reason = f"no answer within {self._timeout.total:g} s"
        self._count("sent" if ok else "failed")
        if ok:
            return
        count = self._failures.hit(peer)
        if count is not None:
            log.warning(
                "webhook forward to %s failed: %s; it catches up at its next poll or interval "
                "cycle [%d failure(s) to this peer since its last line]",
                peer,
                reason,
                count,
                extra={"peer": peer, "count": count},
            )

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

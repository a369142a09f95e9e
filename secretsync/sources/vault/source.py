"""`VaultSource`: reads KV v1 and KV v2 secrets of `vault:` Locations from one Vault or OpenBao
server, through its `Transport`, as the identity its `Login` holds.

Every failure is translated once, in `fetch` (and `current_versions`), into
`errors.SourceUnavailable`, `errors.RefNotFound` or `errors.AccessDenied` naming the Location
and a reason (an HTTP status, "sealed", "timed out", "deleted", ...). Reading each unique
Location once per cycle is `resolve`'s job; this source does not cache values between calls,
so every `fetch` is a fresh read. The KV version of each mount is detected once through
`sys/internal/ui/mounts/<mount>` unless `kvVersion` is set.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable
from typing import ClassVar

from secretsync.core import bounded, errors, model
from secretsync.sources import resolve
from secretsync.sources.vault.auth import Auth, Login
from secretsync.sources.vault.failure import PUBLIC_ERROR, Failed
from secretsync.sources.vault.kv import Mount, check_plain, not_found, parse_mount, parse_read
from secretsync.sources.vault.transport import (
    Budget,
    RetryPolicy,
    Transport,
    VaultCounters,
    json_object,
)

type IdentityAuth = Callable[[model.Identity], tuple[Auth, str | None]]
"""An identity's login material and Vault namespace (built from the source's settings)."""


class VaultSource:
    """Reads `vault:` Locations from one Vault or OpenBao server; see `config.build_vault_source`.

    A Location with an `identity` is read as that identity: its own login (one per token
    lifetime, shared by every read of that identity) and its own namespace. A Location
    without one is read with the source's own settings. A token is never used for another
    identity's reads, so a policy that denies a path fails only the Locations of the identity
    it binds.

    One instance serves one event loop (its session, locks and semaphore bind to it) and is
    closed with `aclose()`. `counters` counts reads, logins, requests and failures by reason.
    """

    kind: ClassVar[str] = "vault"

    def __init__(
        self,
        *,
        address: str,
        auth: Auth,
        namespace: str | None = None,
        kv_mount: str = "secret",
        kv_version: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: model.VaultLimits | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        identity_auth: IdentityAuth | None = None,
    ) -> None:
        self.address = address
        self.counters = VaultCounters()
        self._retry = retry or RetryPolicy()
        self._kv_mount = kv_mount.strip("/")
        self._kv_version = kv_version
        self._transport = Transport(
            address=address,
            counters=self.counters,
            ssl_context=ssl_context,
            limits=limits,
            retry=self._retry,
        )
        self._clock = clock
        self._identity_auth = identity_auth
        self._login = self._new_login(auth, namespace, label="")
        self._logins: dict[model.Identity, Login | Failed] = {}
        self._mounts: dict[tuple[str, str], Mount] = {}
        self._mount_locks: dict[tuple[str, str], asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"VaultSource(address={self.address!r}, auth={self._login.auth.method!r})"

    def _new_login(self, auth: Auth, namespace: str | None, *, label: str) -> Login:
        headers: dict[str, str] = {"X-Vault-Request": "true"}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        return Login(
            auth=auth,
            transport=self._transport,
            headers=headers,
            counters=self.counters,
            retry=self._retry,
            clock=self._clock,
            label=label,
        )

    def _login_for(self, identity: model.Identity | None) -> Login:
        """The login of an identity, made on first use and kept for the source's lifetime (its
        token is renewed or replaced as it runs out)."""
        if identity is None:
            return self._login
        known = self._logins.get(identity)
        if known is None:
            if self._identity_auth is None:
                known = Failed("denied", "this source has no templated identity settings")
            else:
                try:
                    auth, namespace = self._identity_auth(identity)
                    known = self._new_login(auth, namespace, label=str(identity))
                except errors.ConfigError as exc:
                    known = Failed("denied", f"identity {identity}: {exc.message}")
            self._logins[identity] = known
        if isinstance(known, Failed):
            raise known
        return known

    # --- the Source protocol -----------------------------------------------------------------

    async def fetch(self, location: model.Location) -> resolve.Fetched:
        """Read one secret (at its pinned version, if any). Raises only ResolveErrors."""
        try:
            return await self._read(location, Budget(self._retry.budget_s))
        except Failed as failure:
            failures = self.counters.failures
            failures[failure.reason] = failures.get(failure.reason, 0) + 1
            who = f" (as {location.identity})" if location.identity is not None else ""
            raise PUBLIC_ERROR[failure.reason](f"{location}{who}: {failure.message}") from None

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
        answers = await bounded.each(
            wanted, self._latest_version, limit=self._transport.concurrency
        )
        out: dict[model.Location, int | None] = {}
        for location, answer in zip(wanted, answers, strict=True):
            if isinstance(answer, Failed):
                failures = self.counters.failures
                failures[answer.reason] = failures.get(answer.reason, 0) + 1
                error = PUBLIC_ERROR[answer.reason]
                if issubclass(error, errors.SourceUnavailable):
                    who = f" (as {location.identity})" if location.identity is not None else ""
                    raise error(f"{location}{who}: metadata: {answer.message}")
                out[location] = None
            else:
                out[location] = answer
        return out

    def counts(self) -> dict[str, int]:
        """`counters` as flat numbers (`resolve.Counted`)."""
        return self.counters.snapshot()

    async def aclose(self) -> None:
        await self._transport.aclose()

    # --- reads -------------------------------------------------------------------------------

    async def _locate(
        self, location: model.Location, budget: Budget
    ) -> tuple[Login, Mount, str, str]:
        """(the identity's login, the KV mount, its name, the path inside the mount) of a
        Location; `Failed` when the mount or path is not plain."""
        mount_name = (location.mount or self._kv_mount).strip("/")
        path = location.path.strip("/")
        check_plain("mount", mount_name)
        check_plain("path", path)
        login = self._login_for(location.identity)
        mount = await self._mount(mount_name, login, budget)
        return login, mount, mount_name, f"{mount.prefix}/{path}" if mount.prefix else path

    async def _read(self, location: model.Location, budget: Budget) -> resolve.Fetched:
        if location.source != self.kind:
            raise Failed("invalid", f"not a {self.kind} location")
        login, mount, mount_name, inner = await self._locate(location, budget)
        if mount.version == 1:
            if location.version is not None:
                raise Failed(
                    "invalid",
                    f"mount {mount_name!r} is KV version 1, which keeps no versions "
                    f"(version {location.version} asked)",
                )
            api_path, query = f"{mount.path}/{inner}", ""
        else:
            api_path = f"{mount.path}/data/{inner}"
            query = "" if location.version is None else f"version={int(location.version)}"
        status, payload = await login.call("GET", api_path, query=query, budget=budget)
        if status == 200:
            fetched = parse_read(payload, kv_version=mount.version, pinned=location.version)
            self.counters.reads += 1
            self.counters.bytes_read += len(payload)
            return fetched
        if status == 404:
            raise not_found(payload, pinned=location.version)
        if status == 403:
            raise Failed("denied", "permission denied (HTTP 403)")
        raise Failed("invalid", f"the server refused the read (HTTP {status})")

    async def _latest_version(self, location: model.Location) -> int | Failed | None:
        """The current version from the KV v2 metadata, or the failure (never raised)."""
        if location.source != self.kind or location.version is not None:
            return None
        budget = Budget(self._retry.budget_s)
        try:
            login, mount, _, inner = await self._locate(location, budget)
            if mount.version != 2:
                return None
            status, payload = await login.call(
                "GET", f"{mount.path}/metadata/{inner}", budget=budget
            )
            if status == 200:
                self.counters.metadata_reads += 1
                data = json_object(payload).get("data")
                version = data.get("current_version") if isinstance(data, dict) else None
                if not isinstance(version, int) or isinstance(version, bool):
                    raise Failed("server_error", "the metadata holds no current_version")
                return version
            if status == 404:
                raise Failed("not_found", "no secret at this path (HTTP 404)")
            if status == 403:
                raise Failed("denied", "permission denied (HTTP 403)")
            raise Failed("invalid", f"the server refused the metadata read (HTTP {status})")
        except Failed as failure:
            return failure

    async def _mount(self, name: str, login: Login, budget: Budget) -> Mount:
        """The mount, looked up once per Vault namespace (as the first identity that needs
        it: what a mount is does not depend on who asks; every read still uses its own
        identity's token)."""
        where = (login.headers.get("X-Vault-Namespace", ""), name)
        known = self._mounts.get(where)
        if known is not None:
            return known
        if self._kv_version is not None:
            known = self._mounts[where] = Mount(path=name, prefix="", version=self._kv_version)
            return known
        lock = self._mount_locks.setdefault(where, asyncio.Lock())
        async with lock:  # concurrent refs on one mount share one lookup
            known = self._mounts.get(where)
            if known is not None:
                return known
            self.counters.mount_lookups += 1
            status, payload = await login.call(
                "GET", f"sys/internal/ui/mounts/{name}", budget=budget
            )
            if status == 200:
                known = parse_mount(name, payload)
            elif status in (403, 404):
                raise Failed(
                    "denied",
                    f"mount {name!r} does not exist or this token may not use it (HTTP {status})",
                )
            else:
                raise Failed("invalid", f"mount {name!r}: lookup refused (HTTP {status})")
            self._mounts[where] = known
            return known

"""Who may read the status API: bearer tokens on `/v1/status`, `/v1/status/*`, the fleet page
`/` and `/metrics`.

Two checks, either or both (`serve --api-token-file FILE`, `serve --api-auth kubernetes`):

- `TokenFile`: static tokens, one per line (blank lines and `#` comments ignored), compared in
  constant time against every line. The file is read again when its inode, size or mtime
  changes; a file that no longer reads keeps the tokens last read (and says so in the log).
- `KubernetesReview`: the token goes to a TokenReview on the home cluster; the user it names
  must then be allowed `get` on the request's path as a non-resource URL by a
  SubjectAccessReview (RBAC `nonResourceURLs`), as kube-rbac-proxy does. Answers are cached
  per token and path, 60 s when allowed and 10 s when refused, at most `CACHE_SIZE` entries; an
  API server that cannot answer is a 503 and is not cached.

A request without a token is 401 with `WWW-Authenticate: Bearer`; an unknown token is 401; a
token whose user lacks the RBAC is 403. `/healthz`, `/readyz` and the webhook (which carries
its own signature) are never checked here. Tokens are never logged: log lines name the user a
TokenReview returned, or the path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

log = logging.getLogger(__name__)

ALLOWED_TTL_S = 60.0
DENIED_TTL_S = 10.0
CACHE_SIZE = 4096
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def protected(path: str) -> bool:
    """The paths that need a token: the status API, the page and the metrics."""
    return path in ("/", "/metrics", "/v1/status") or path.startswith("/v1/status/")


@dataclass(frozen=True, slots=True)
class Decision:
    status: int  # 200 allowed, 401 not authenticated, 403 not allowed, 503 cannot tell
    reason: str


ALLOW = Decision(200, "allowed")
UNKNOWN = Decision(401, "unknown token")


class Check(Protocol):
    """One way of checking a bearer token for a path."""

    async def check(self, token: str, *, path: str) -> Decision: ...


class ApiError(Exception):
    """The token file cannot be used (unreadable, or holds no token)."""


class TokenFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._reload(initial=True)

    def _reload(self, *, initial: bool = False) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            message = f"API token file {self.path}: {exc.__class__.__name__}"
            if initial:
                raise ApiError(message) from None
            log.error("%s; the tokens read before stay in use", message)
            return
        tokens = tuple(
            t.encode() for line in lines if (t := line.strip()) and not t.startswith("#")
        )
        if not tokens:
            if initial:
                raise ApiError(f"API token file {self.path}: no token in it")
            log.error("API token file %s: no token in it; the tokens read before stay", self.path)
            return
        if not initial:
            log.info("API token file %s read again: %d token(s)", self.path, len(tokens))
        self._stamp, self._tokens = stamp, tokens

    async def check(self, token: str, *, path: str) -> Decision:
        self._reload()
        given = token.encode()
        match = False
        for known in self._tokens:  # every line compared: the time does not say which matched
            match |= hmac.compare_digest(known, given)
        return ALLOW if match else UNKNOWN


class Api(Protocol):
    """The part of `clusters.Endpoint` the reviews need (the home cluster's)."""

    async def request(
        self, method: str, path: str, *, body: object = None, timeout_s: float = 15.0
    ) -> tuple[int, bytes, Any]: ...


class KubernetesReview:
    def __init__(
        self,
        api: Api,
        *,
        clock: Callable[[], float] = time.monotonic,
        allowed_ttl_s: float = ALLOWED_TTL_S,
        denied_ttl_s: float = DENIED_TTL_S,
        size: int = CACHE_SIZE,
    ) -> None:
        self.api = api
        self._clock = clock
        self._ttl = {True: allowed_ttl_s, False: denied_ttl_s}
        self._size = size
        self._cache: OrderedDict[bytes, tuple[float, Decision]] = OrderedDict()

    async def check(self, token: str, *, path: str) -> Decision:
        key = hashlib.sha256(f"{path}\0{token}".encode()).digest()  # the token is not kept
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        decision = await self._review(token, path)
        if decision.status in (200, 401, 403):
            self._cache.pop(key, None)
            while len(self._cache) >= self._size:
                self._cache.popitem(last=False)
            self._cache[key] = (now + self._ttl[decision.status == 200], decision)
        return decision

    async def _review(self, token: str, path: str) -> Decision:
        review = await self._post(
            TOKEN_REVIEWS,
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        if review is None:
            return Decision(503, "TokenReview failed")
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return UNKNOWN
        user = status.get("user") or {}
        spec: dict[str, Any] = {
            "user": user.get("username", ""),
            "groups": user.get("groups") or [],
            "uid": user.get("uid", ""),
            "nonResourceAttributes": {"path": path, "verb": "get"},
        }
        if user.get("extra"):
            spec["extra"] = user["extra"]
        access = await self._post(
            ACCESS_REVIEWS,
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": spec,
            },
        )
        if access is None:
            return Decision(503, "SubjectAccessReview failed")
        if (access.get("status") or {}).get("allowed"):
            return ALLOW
        log.info("status API: %s may not get %s", spec["user"], path)
        return Decision(403, f"{spec['user']} may not get {path}")

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        code, raw, _ = await self.api.request("POST", path, body=body, timeout_s=5.0)
        if code not in {200, 201}:
            log.warning("status API: %s answered HTTP %d", path.rsplit("/", 1)[-1], code)
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


class Guard:
    """The checks in order: the first that allows wins; a 403 is kept over a 401."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = tuple(checks)

    async def decide(self, header: str | None, *, path: str) -> Decision:
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Decision(401, "no bearer token")
        worst = UNKNOWN
        for check in self.checks:
            decision = await check.check(token, path=path)
            if decision.status == 200:
                return decision
            if decision.status > worst.status:
                worst = decision
        return worst

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if not protected(request.path):
            return await handler(request)
        decision = await self.decide(request.headers.get("Authorization"), path=request.path)
        if decision.status == 200:
            return await handler(request)
        headers = {"Cache-Control": "no-store"}
        if decision.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="secretsync"'
        return web.json_response(
            {"error": decision.reason}, status=decision.status, headers=headers
        )


def home_api(home_kubeconfig: str | None, plugins: Any) -> Api:
    """The home cluster's endpoint: `--home-kubeconfig`, else the pod's service account."""
    from secretsync.kube import clusters  # noqa: PLC0415 - kubernetes only when needed

    if home_kubeconfig:
        return clusters.endpoint_from_file(Path(home_kubeconfig), plugins=plugins)
    return clusters.in_cluster_endpoint()

"""KubernetesReview's cache and Guard's answers, with an API server of our own (`ReviewApi`
answers TokenReviews and SubjectAccessReviews from two tables) and a clock the test moves."""

from __future__ import annotations

import json
from typing import Any

from secretsync.daemon import apiauth
from tests.support import canary


class ReviewApi:
    def __init__(self) -> None:
        self.users: dict[str, str] = {}  # token -> user
        self.allowed: set[tuple[str, str]] = set()  # (user, path)
        self.calls: list[str] = []
        self.down = False

    async def request(
        self, method: str, path: str, *, body: object = None, timeout_s: float = 15.0
    ) -> tuple[int, bytes, Any]:
        assert method == "POST" and isinstance(body, dict)
        self.calls.append(body["kind"])
        if self.down:
            return 0, b"", {}
        spec = body["spec"]
        if body["kind"] == "TokenReview":
            user = self.users.get(spec["token"])
            status: dict[str, Any] = {"authenticated": user is not None}
            if user:
                status["user"] = {"username": user, "groups": ["system:authenticated"]}
        else:
            attrs = spec["nonResourceAttributes"]
            assert attrs["verb"] == "get"
            status = {"allowed": (spec["user"], attrs["path"]) in self.allowed}
        return 201, json.dumps({"status": status}).encode(), {}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_allowed_cached_60_s_refused_10_s_failures_never() -> None:
    api, clock = ReviewApi(), Clock()
    review = apiauth.KubernetesReview(api, clock=clock)
    token = canary.new("sa-token")
    api.users[token] = "reader"
    assert (await review.check(token, path="/v1/status")).status == 403
    api.allowed.add(("reader", "/v1/status"))
    clock.now += 9
    assert (await review.check(token, path="/v1/status")).status == 403  # still cached
    clock.now += 2
    assert (await review.check(token, path="/v1/status")).status == 200
    calls = len(api.calls)
    api.allowed.clear()
    clock.now += 59
    assert (await review.check(token, path="/v1/status")).status == 200  # cached
    assert len(api.calls) == calls
    clock.now += 2
    assert (await review.check(token, path="/v1/status")).status == 403
    # per path: a grant on one path says nothing of another
    assert (await review.check(token, path="/metrics")).status == 403
    # an API server that cannot answer: 503, asked again next time
    api.down = True
    other = canary.new("sa-token")
    assert (await review.check(other, path="/v1/status")).status == 503
    api.down = False
    api.users[other] = "reader"
    api.allowed.add(("reader", "/v1/status"))
    assert (await review.check(other, path="/v1/status")).status == 200


async def test_cache_is_bounded() -> None:
    api, clock = ReviewApi(), Clock()
    review = apiauth.KubernetesReview(api, clock=clock, size=8)
    for i in range(50):
        await review.check(f"unknown-{i}", path="/")
    assert len(review._cache) == 8


async def test_guard_needs_a_bearer_token_and_keeps_403_over_401() -> None:
    api = ReviewApi()
    token = canary.new("sa-token")
    api.users[token] = "someone"
    guard = apiauth.Guard([apiauth.KubernetesReview(api)])
    assert (await guard.decide(None, path="/")).status == 401
    assert (await guard.decide(f"Basic {token}", path="/")).status == 401
    assert (await guard.decide("Bearer ", path="/")).status == 401
    assert (await guard.decide("Bearer nobody", path="/")).status == 401
    assert (await guard.decide(f"Bearer {token}", path="/")).status == 403
    assert (await guard.decide(f"bearer {token}", path="/metrics")).status == 403  # any case


def test_protected_paths() -> None:
    for path in ("/", "/metrics", "/v1/status", "/v1/status/summary"):
        assert apiauth.protected(path), path
    for path in ("/healthz", "/readyz", "/v1/webhooks/vault", "/v1/statusx", "/favicon.ico"):
        assert not apiauth.protected(path), path

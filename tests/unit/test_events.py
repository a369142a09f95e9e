"""Event correlation (tests/MATRIX.md row E1): de-duplication, the rate limit and messages,
with injected clocks (no sleeps, no API server; `tests/adapters/test_events.py` posts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from secretsync.kube import events
from secretsync.kube.events import Correlator, ObjectRef
from secretsync.net.ratelimit import TokenBucket

POD = ObjectRef(kind="Pod", api_version="v1", namespace="ops", name="secretsync-0", uid="u-1")


class Clock:
    def __init__(self) -> None:
        self.s = 1000.0
        self.start = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

    def mono(self) -> float:
        return self.s

    def wall(self) -> datetime:
        return self.start + timedelta(seconds=self.s - 1000.0)


def correlator(clock: Clock, **kw: float) -> Correlator:
    return Correlator(
        involved=POD,
        host="node-1",
        wall_clock=clock.wall,
        clock=clock.mono,
        **kw,  # type: ignore[arg-type]
    )


def test_the_same_event_bumps_count_on_one_name() -> None:
    clock = Clock()
    c = correlator(clock)
    first = c.correlate(events.SYNC_FAILED, "cluster a: ns/x: not found")
    assert first is not None and not first.patch and first.body["count"] == 1
    assert first.body["involvedObject"] == {
        "kind": "Pod",
        "apiVersion": "v1",
        "namespace": "ops",
        "name": "secretsync-0",
        "uid": "u-1",
    }
    assert first.body["metadata"] == {"name": first.name, "namespace": "ops"}
    assert first.body["type"] == "Warning" and first.body["source"]["host"] == "node-1"
    clock.s += 300
    again = c.correlate(events.SYNC_FAILED, "cluster a: ns/x: not found")
    assert again is not None and again.patch and again.name == first.name
    assert again.body["count"] == 2
    assert again.body["firstTimestamp"] == "2026-12-06T12:00:00Z"
    assert again.body["lastTimestamp"] == "2026-12-06T12:05:00Z"
    other = c.correlate(events.SYNC_FAILED, "cluster a: ns/y: not found")
    assert other is not None and not other.patch and other.name != first.name


def test_after_the_window_a_new_event_is_made() -> None:
    clock = Clock()
    c = correlator(clock, window_s=600)
    first = c.correlate(events.DELETES_HELD, "cluster a: 3 deletes held")
    clock.s += 601
    later = c.correlate(events.DELETES_HELD, "cluster a: 3 deletes held")
    assert first is not None and later is not None
    assert not later.patch and later.name != first.name and later.body["count"] == 1


def test_a_flood_is_capped_per_reason_and_refills() -> None:
    clock = Clock()
    c = correlator(clock)
    posts = [c.correlate(events.SYNC_FAILED, f"cluster a: ns/s{i}: not found") for i in range(100)]
    assert sum(p is not None for p in posts) == events.BURST == 25
    assert c.limited == 75
    # another reason has its own bucket: a flood of failures does not hide a refused commit
    assert c.correlate(events.FLEET_REFUSED, "commit abc refused") is not None
    assert c.correlate(events.SYNC_FAILED, "cluster a: ns/more: x") is None
    clock.s += events.REFILL_S
    assert c.correlate(events.SYNC_FAILED, "cluster a: ns/more: x") is not None
    assert c.correlate(events.SYNC_FAILED, "cluster a: ns/more2: x") is None


def test_a_dropped_occurrence_still_counts() -> None:
    clock = Clock()
    c = correlator(clock, burst=1, refill_s=60)
    assert c.correlate(events.SYNC_FAILED, "m") is not None
    assert c.correlate(events.SYNC_FAILED, "m") is None  # limited, but counted
    clock.s += 60
    post = c.correlate(events.SYNC_FAILED, "m")
    assert post is not None and post.patch and post.body["count"] == 3


def test_the_cache_is_bounded() -> None:
    clock = Clock()
    c = correlator(clock, cache_size=2, burst=100)
    a = c.correlate(events.SYNC_FAILED, "a")
    c.correlate(events.SYNC_FAILED, "b")
    c.correlate(events.SYNC_FAILED, "c")
    again = c.correlate(events.SYNC_FAILED, "a")  # forgotten: a new Event
    assert a is not None and again is not None and not again.patch and again.name != a.name


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=1 / 10, burst=2, clock=lambda: now[0])
    assert [bucket.try_take() for _ in range(3)] == [True, True, False]
    now[0] = 5
    assert not bucket.try_take()
    now[0] = 10
    assert bucket.try_take() and not bucket.try_take()
    now[0] = 1000
    assert [bucket.try_take() for _ in range(3)] == [True, True, False]  # never above the burst


def test_token_bucket_reserve_goes_into_debt_and_refunds() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=1, clock=lambda: now[0])
    assert bucket.reserve() == 0  # the burst
    assert [bucket.reserve(), bucket.reserve()] == [0.5, 1.0]  # spread 1 / rate apart
    bucket.refund()  # the last one is not used: the next waits as long as it would have
    assert bucket.reserve() == 1.0
    now[0] = 1.0
    assert bucket.reserve() == 0.5  # the debt is paid by the refill


def test_messages_are_one_line_and_capped() -> None:
    assert events.message_of("a\n  b\tc") == "a b c"
    long = events.message_of("é" * 2000)
    assert len(long.encode()) <= events.MAX_MESSAGE_BYTES and long.endswith("...")
    post = correlator(Clock()).correlate(events.FLEET_REFUSED, "x" * 5000)
    assert post is not None and len(post.body["message"].encode()) == events.MAX_MESSAGE_BYTES


def test_involved_object_is_the_pod_else_the_shard_lease() -> None:
    env = {"POD_NAME": "secretsync-2", "POD_NAMESPACE": "ops", "POD_UID": "u"}
    assert events.involved_object(env, namespace="x", shard_index=2) == ObjectRef(
        kind="Pod", api_version="v1", namespace="ops", name="secretsync-2", uid="u"
    )
    lease = events.involved_object({"HOSTNAME": "laptop"}, namespace="ops", shard_index=1)
    assert (lease.kind, lease.namespace, lease.name) == ("Lease", "ops", "secretsync-shard-1")


class Recorded(events.Events):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def emit(self, reason: str, message: str) -> None:
        self.seen.append((reason, message))


def test_condition_messages() -> None:
    r = Recorded()
    now = datetime(2026, 12, 6, tzinfo=UTC)
    r.certificates(
        {
            "soon": now + timedelta(days=3),
            "later": now + timedelta(days=30),
            "gone": now - timedelta(days=1),
        },
        now=now,
        warn_days=7,
    )
    r.fleet_refused("abc123", "clusters/a.yaml:3: spec.x: unknown field\nmore detail")
    r.fleet_refused(None, "")
    r.deletes_held("a", 12)
    assert r.seen == [
        (
            "CertificateExpiring",
            "cluster gone: sealing certificate expired 2026-12-05T00:00:00Z: "
            "run `secretsync cluster refresh-cert gone`",
        ),
        (
            "CertificateExpiring",
            "cluster soon: sealing certificate expires 2026-12-09T00:00:00Z: "
            "run `secretsync cluster refresh-cert soon`",
        ),
        (
            "FleetRefused",
            "commit abc123 refused, the last good one stays: "
            "clusters/a.yaml:3: spec.x: unknown field",
        ),
        ("FleetRefused", "fleet repo refused, the last good one stays: refused"),
        (
            "DeletesHeld",
            "cluster a: 12 deletes held: over the delete limit (see /v1/status deletesHeld)",
        ),
    ]

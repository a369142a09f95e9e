"""Shard assignment (stable sha256 hash, balance), shard index derivation, the `serve` election
options, and the sink gate that refuses writes once leadership is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Set
from typing import ClassVar

import pytest

from secretsync.cli import common, serve
from secretsync.core import errors
from secretsync.core.model import Cluster, ObjectKey, Observed
from secretsync.daemon.sharding import ElectionSettings, GatedSink, derive_shard_index, shard_of
from secretsync.delivery.rendered import Rendered
from secretsync.kube.leases import LeaseTiming, process_identity
from secretsync.sinks import deliver
from secretsync.sinks.deliver import ApplyResult, ChangeSet


def test_shards_are_balanced() -> None:
    names = [f"cluster-{i:03d}" for i in range(300)]
    counts = Counter(shard_of(n, 3) for n in names)
    assert set(counts) == {0, 1, 2}
    for shard, n in counts.items():
        assert 80 <= n <= 120, (shard, counts)


def test_shard_of_is_a_fixed_function_of_the_name() -> None:
    # pinned: sha256 of the name, first 8 bytes big-endian, modulo the shard count
    assert [shard_of(n, 3) for n in ("prod-eu-1", "prod-us-1", "staging", "kube-b")] == [
        1,
        1,
        1,
        2,
    ]
    assert shard_of("kube-a", 7) == 3
    assert shard_of("anything", 1) == 0
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("x", 0)


def test_shard_of_agrees_across_processes_with_other_hash_seeds() -> None:
    names = [f"c{i}" for i in range(50)]
    here = [shard_of(n, 5) for n in names]
    code = f"from secretsync.daemon.sharding import shard_of; print([shard_of(n, 5) for n in {names!r}])"
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert out.strip() == str(here)


def test_shard_index_sources_in_order() -> None:
    assert derive_shard_index(explicit=2, env={"SECRETSYNC_SHARD_INDEX": "1"}) == 2
    assert derive_shard_index(explicit=None, env={"SECRETSYNC_SHARD_INDEX": "1"}) == 1
    assert derive_shard_index(explicit=None, env={}, hostname="secretsync-4") == 4
    assert derive_shard_index(explicit=None, env={}, hostname="laptop") is None
    with pytest.raises(ValueError, match="non-negative"):
        derive_shard_index(explicit=None, env={"SECRETSYNC_SHARD_INDEX": "-1"})


def test_lease_timing_and_election_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        LeaseTiming(lease_duration_s=2, renew_deadline_s=3, retry_period_s=1)
    with pytest.raises(ValueError, match=r"not in 0\.\.1"):
        ElectionSettings(shards=2, shard_index=2, identity="x")
    ident = process_identity({"HOSTNAME": "secretsync-1"})
    assert ident.startswith("secretsync-1_") and ident != process_identity(
        {"HOSTNAME": "secretsync-1"}
    )


def _settings(env: Mapping[str, str]) -> common.Settings:
    return common.Settings(output="text", hmac_key=None, env=env)


def _election(env: Mapping[str, str] | None = None, **kw: object) -> ElectionSettings | None:
    args: dict[str, object] = {
        "shards": 1,
        "shard_index": None,
        "leader_elect": None,
        "home_kubeconfig": None,
        "namespace": "ns",
        "lease_duration": 15.0,
    }
    args.update(kw)
    return serve._election(_settings(env or {}), **args)  # type: ignore[arg-type]


def test_serve_election_options() -> None:
    # one replica, no home cluster: as before, no Lease
    assert _election() is None
    # a pod (or a home kubeconfig) turns election on, shard 0 of 1 whatever the hostname
    on = _election({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "secretsync-3"})
    assert on is not None and (on.shards, on.shard_index, on.namespace) == (1, 0, "ns")
    assert on.identity.startswith("secretsync-3_")
    assert on.timing.renew_deadline_s == 10.0 and on.timing.retry_period_s == 2.0
    sharded = _election({"HOSTNAME": "secretsync-2"}, shards=3, home_kubeconfig="home.yaml")
    assert sharded is not None and sharded.shard_index == 2
    with pytest.raises(common.UsageError, match="home cluster"):
        _election({"HOSTNAME": "secretsync-2"}, shards=3)
    with pytest.raises(common.UsageError, match="shard-index"):
        _election({"HOSTNAME": "laptop"}, shards=3)
    with pytest.raises(common.UsageError, match="not below"):
        _election({}, shards=3, shard_index=3)
    with pytest.raises(common.UsageError, match="leader election"):
        _election({}, shards=2, shard_index=0, leader_elect=False)


class Recorder:
    name: ClassVar[str] = "kube"
    stages: ClassVar[bool] = True
    shared: ClassVar[bool] = False

    def progress(self, cluster: Cluster, mark: Callable[[], None] | None) -> None:
        return None

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.staged: list[str] = []
        self.finished: list[str] = []
        self.discarded: list[str] = []

    def accepts(self, cluster: Cluster) -> bool:
        return True

    def observes(self, cluster: Cluster) -> bool:
        return True

    async def observe(self, cluster: Cluster) -> Mapping[ObjectKey, Observed]:
        return {}

    async def detail(self, observed: Observed) -> Observed:
        return observed

    def stage(self, cluster: Cluster, item: Rendered) -> None:
        self.staged.append(item.key.name)

    async def apply(self, cluster: Cluster, changes: ChangeSet) -> ApplyResult:
        self.applied.append(cluster.name)
        return ApplyResult()

    async def finish_cluster(self, cluster: Cluster) -> None:
        self.finished.append(cluster.name)

    def discard(self, cluster: Cluster) -> None:
        self.discarded.append(cluster.name)

    async def orphans(self, known: Set[str]) -> list[str]:
        return ["gone-a", "gone-b"]


async def test_gated_sink_refuses_writes_once_the_gate_closes() -> None:
    inner = Recorder()
    allowed = {"a", "gone-a"}
    sink = GatedSink(inner, allowed=lambda name: name in allowed)
    a = Cluster(name="a", labels={}, delivery="direct", origin="x")
    b = Cluster(name="b", labels={}, delivery="direct", origin="x")
    assert sink.name == "kube"
    assert sink.accepts(a) and sink.observes(a)
    assert not sink.accepts(b) and not sink.observes(b)
    assert await sink.orphans(set()) == ["gone-a"]
    await sink.apply(a, ChangeSet())
    await sink.finish_cluster(a)
    allowed.clear()  # leadership lost mid-cycle
    with pytest.raises(errors.DeliveryError, match="lost the Lease"):
        await sink.apply(a, ChangeSet())
    with pytest.raises(errors.DeliveryError, match="lost the Lease"):
        await sink.finish_cluster(a)
    sink.discard(a)
    assert inner.applied == ["a"]
    assert inner.finished == ["a"]
    assert inner.discarded == ["a"], "what was staged is dropped whoever holds the Lease"


def test_gated_sink_passes_the_wrapped_sinks_abilities_through() -> None:
    """The engine batches and stages by `stages`: a gate must not hide it (a gated Git sink
    got its objects in batches of 100 and lost its kustomization entries)."""
    inner = Recorder()
    allowed = {"a"}
    sink = GatedSink(inner, allowed=lambda name: name in allowed)
    a = Cluster(name="a", labels={}, delivery="sealed", origin="x")
    b = Cluster(name="b", labels={}, delivery="sealed", origin="x")
    assert sink.stages is True
    inner.stages = False  # type: ignore[misc]
    assert sink.stages is False
    item = Rendered(
        key=ObjectKey("a", "ns", "one"),
        fleet_secret="one",
        delivery="sealed",
        kind="SealedSecret",
        content_hash="h",
        key_hashes={},
        manifest={},
    )
    sink.stage(a, item)
    sink.stage(b, item)  # not this replica's to write: nothing is written ahead
    assert inner.staged == ["one"]


def test_delegating_sink_passes_every_member_of_the_sink_contract() -> None:
    """A member added to `Sink` and not to `DelegatingSink` would be missing from every wrapper
    (the Lease gate), which the engine would then treat unlike the sink it wraps."""
    contract = {name for name in vars(deliver.Sink) if not name.startswith("_")}
    assert contract, "the contract's members are read from the protocol class"
    assert contract <= set(vars(deliver.DelegatingSink))
    inner = Recorder()
    sink = deliver.DelegatingSink(inner)
    assert sink.name == "kube" and sink.stages is True and sink.shared is False

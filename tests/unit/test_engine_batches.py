"""A sink that does not stage gets a cluster's objects in batches: each batch rendered and
applied before the next is rendered, grouped by namespace, deletes with the last batch, and
the outcome the same as in one batch (creates, updates, conflicts, kept objects, deletes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from secretsync.core.model import ObjectKey, Observed
from secretsync.engine.report import CycleReport
from tests.support import canary, cycles
from tests.support.fakes import FakeSource, MemorySink

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"batch-hmac-key"
COUNT = 12
CLUSTER = "c1"

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: batches}
spec: {defaults: {delivery: direct}}
"""


def fleet_files() -> dict[str, str | bytes]:
    secrets = "---\n".join(
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: s{i:02d}}}\n"
        "spec:\n  clusterSelector: {}\n"
        f"  target: {{name: s{i:02d}, namespace: ns{i % 3}}}\n"
        f"  data: {{v: {{vault: {{path: p{i}, key: v}}}}}}\n"
        for i in range(COUNT)
    )
    cluster = (
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {CLUSTER}}}\nspec: {{kubeconfig: {{path: /etc/secretsync/kube.yaml}}}}\n"
    )
    return {"secretsync.yaml": FLEET, "clusters/c.yaml": cluster, "secrets/all.yaml": secrets}


def seeded_sink() -> MemorySink:
    """What the cluster holds before the cycle: a leftover secretsync owns (to delete), a
    foreign object on a wanted name (a conflict) and an owned object whose source fails
    (kept as it is)."""
    sink = MemorySink(log=True)
    held = sink.objects.setdefault(CLUSTER, {})
    for name, namespace, owned in (
        ("gone", "ns0", True),
        ("s05", "ns2", False),
        ("s07", "ns1", True),
    ):
        key = ObjectKey(CLUSTER, namespace, name)
        held[key] = Observed(key=key, kind="Secret", owned=owned, content_hash="old")
    return sink


def run(
    root: Path, values: dict[str, dict[str, object]], batch_size: int
) -> tuple[CycleReport, MemorySink]:
    source = FakeSource(values)
    del source.documents["p7"]  # s07's source fails: its object is kept
    sink = seeded_sink()
    return cycles.run(root, source, sink, key=KEY, batch_size=batch_size), sink


def test_batches_are_applied_one_by_one_with_the_outcome_of_one_batch(
    fleet_repo: MakeRepo,
) -> None:
    root = fleet_repo(fleet_files())
    values: dict[str, dict[str, object]] = {
        f"p{i}": {"v": canary.new(f"batch-{i}")} for i in range(COUNT)
    }
    report, sink = run(root, values, batch_size=4)
    whole, one = run(root, values, batch_size=1000)

    assert len(one.applied) == 1
    assert len(sink.applied) == 3  # 12 wanted, 4 at a time
    for number, changes in enumerate(sink.applied, start=1):
        items = [*changes.create, *changes.update]
        assert len(items) <= 4
        assert bool(changes.delete) == (number == len(sink.applied)), "deletes go last"
    order = [i.key.namespace for c in sink.applied for i in [*c.create, *c.update]]
    assert order == sorted(order), "grouped by namespace"

    def outcome(r: CycleReport) -> set[tuple[str, str, str]]:
        return {(i.namespace, i.name, i.action) for i in r.items}

    assert outcome(report) == outcome(whole)
    assert ("ns0", "gone", "delete") in outcome(report)
    assert ("ns1", "s07", "failed") in outcome(report)
    assert ("ns2", "s05", "failed") in outcome(report)
    assert report.writes == whole.writes == COUNT - 2
    assert sink.objects == one.objects
    held = sink.objects[CLUSTER]
    assert held[ObjectKey(CLUSTER, "ns1", "s07")].content_hash == "old", "kept as it was"
    assert not held[ObjectKey(CLUSTER, "ns2", "s05")].owned, "a foreign object is not touched"
    assert ObjectKey(CLUSTER, "ns0", "gone") not in held

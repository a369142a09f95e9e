"""The Fleet's delete limit: a run that would delete more than `deleteLimit` of what
secretsync owns on a cluster deletes nothing there (creates and updates still go), reports the
held objects, and `allow_deletes` lifts the limit for one run. A cluster that left the fleet
counts against the same limit. A random one-selector edit never deletes past the limit."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretsync.core import errors
from secretsync.engine.report import CycleReport
from secretsync.fleet import load
from tests.support import cycles
from tests.support.fakes import FakeSource, MemorySink

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"delete-limit-hmac-key"


def fleet_yaml(limit: str | None = None) -> str:
    policies = f"  policies: {{deleteLimit: {limit}}}\n" if limit is not None else ""
    return (
        "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: limits}\n"
        "spec:\n  defaults: {delivery: direct}\n" + policies
    )


def cluster_yaml(name: str, labels: str = "env: prod") -> str:
    return (
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {name}, labels: {{{labels}}}}}\nspec: {{}}\n"
    )


def secrets_yaml(names: list[str], selector: str = "{}") -> str:
    return "---\n".join(
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: {n}}}\n"
        f"spec:\n  clusterSelector: {selector}\n"
        f"  target: {{name: {n}, namespace: apps}}\n"
        "  data: {v: {value: literal}}\n"
        for n in names
    )


def cycle(root: Path, sink: MemorySink, *, allow_deletes: bool = False) -> CycleReport:
    return cycles.run(root, FakeSource(), sink, key=KEY, cycle={"allow_deletes": allow_deletes})


NAMES = [f"s{i}" for i in range(8)]


def seeded(fleet_repo: MakeRepo) -> MemorySink:
    """A cluster holding the 8 objects of the full fleet."""
    sink = MemorySink()
    root = fleet_repo(
        {
            "secretsync.yaml": fleet_yaml(),
            "clusters/c.yaml": cluster_yaml("c1"),
            "secrets/s.yaml": secrets_yaml(NAMES),
        }
    )
    assert cycle(root, sink).ok and sink.writes == 8
    return sink


def shrunk(fleet_repo: MakeRepo, names: list[str], limit: str | None = None) -> Path:
    return fleet_repo(
        {
            "secretsync.yaml": fleet_yaml(limit),
            "clusters/c.yaml": cluster_yaml("c1"),
            "secrets/s.yaml": secrets_yaml(names),
        }
    )


def test_one_delete_is_always_allowed(fleet_repo: MakeRepo) -> None:
    sink = seeded(fleet_repo)
    report = cycle(shrunk(fleet_repo, NAMES[1:], limit="0"), sink)
    assert report.ok and sink.deletes == 1 and not report.held


def test_deletes_within_the_default_quarter_go(fleet_repo: MakeRepo) -> None:
    sink = seeded(fleet_repo)
    report = cycle(shrunk(fleet_repo, NAMES[2:]), sink)  # 2 of 8 owned: 25 %
    assert report.ok and sink.deletes == 2


def test_deletes_over_the_limit_are_all_held_and_the_rest_still_goes(
    fleet_repo: MakeRepo,
) -> None:
    sink = seeded(fleet_repo)
    root = shrunk(fleet_repo, [*NAMES[3:], "new"])  # 3 of 8 deleted, one created
    report = cycle(root, sink)
    assert sink.deletes == 0  # none of the three, not two of them
    assert sorted(i.name for i in report.held) == ["s0", "s1", "s2"]
    assert all("over the delete limit (25%)" in i.reason for i in report.held)
    assert all("--allow-deletes" in i.reason for i in report.held)
    assert [i.name for i in report.items if i.action == "create"] == ["new"]
    assert not report.ok  # the CLI exits 1
    # held, not forgotten: the next run holds them again, until the limit is lifted
    assert len(cycle(root, sink).held) == 3 and sink.deletes == 0
    lifted = cycle(root, sink, allow_deletes=True)
    assert lifted.ok and sink.deletes == 3 and not lifted.held


def test_a_count_limit(fleet_repo: MakeRepo) -> None:
    sink = seeded(fleet_repo)
    assert cycle(shrunk(fleet_repo, NAMES[3:], limit="3"), sink).ok and sink.deletes == 3


def test_a_cluster_that_left_the_fleet_counts_against_the_limit(fleet_repo: MakeRepo) -> None:
    sink = seeded(fleet_repo)
    without = fleet_repo(
        {
            "secretsync.yaml": fleet_yaml(),
            "clusters/c.yaml": cluster_yaml("c2"),
            "secrets/s.yaml": secrets_yaml(NAMES),
        }
    )
    report = cycle(without, sink)
    held = [i for i in report.held if i.cluster == "c1"]
    assert len(held) == 8 and sink.deletes == 0
    assert "the cluster left the fleet" in held[0].reason
    assert cycle(without, sink, allow_deletes=True).ok and sink.deletes == 8


LABELS = ("prod", "stage", "dev")


@st.composite
def fleets_and_edits(draw: st.DrawFn) -> tuple[list[str], list[str], int, str]:
    """Clusters labelled from a small vocabulary, FleetSecrets selecting by env, and one edit
    of one selector's value (a typo, another env, or the same)."""
    envs = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=5))
    selected = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=8))
    index = draw(st.integers(min_value=0, max_value=len(selected) - 1))
    edit = draw(st.sampled_from([*LABELS, "prd", "stg", "de"]))
    return envs, selected, index, edit


def fleet_files(
    envs: list[str], selected: list[str], limit: str, *, deliberate: set[int]
) -> dict[str, str]:
    """FleetSecret i selects `env: selected[i]`; those in `deliberate` allow no clusters."""
    clusters = "---\n".join(cluster_yaml(f"c{i}", f"env: {e}") for i, e in enumerate(envs))
    secrets = "---\n".join(
        secrets_yaml([f"s{i}"], selector=f"{{matchLabels: {{env: {env}}}}}")
        + ("  allowNoClusters: true\n" if i in deliberate else "")
        for i, env in enumerate(selected)
    )
    return {
        "secretsync.yaml": fleet_yaml(limit),
        "clusters/c.yaml": clusters,
        "secrets/s.yaml": secrets,
    }


def write(files: dict[str, str]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="fleet-edit-"))
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets_and_edits(), st.sampled_from(['"25%"', '"50%"', "1", "2"]))
def test_an_edit_of_one_selector_is_refused_or_deletes_within_the_limit(
    case: tuple[list[str], list[str], int, str], limit_text: str
) -> None:
    envs, selected, index, edit = case
    # FleetSecrets that select nothing before the edit say so; the edit keeps what it finds
    deliberate = {i for i, env in enumerate(selected) if env not in envs}
    before = write(fleet_files(envs, selected, limit_text, deliberate=deliberate))
    edited = list(selected)
    edited[index] = edit
    after = write(fleet_files(envs, edited, limit_text, deliberate=deliberate))
    try:
        sink = MemorySink()
        cycle(before, sink)
        owned = {c: len(held) for c, held in sink.objects.items()}
        present = {c: set(held) for c, held in sink.objects.items()}
        if edit not in envs and index not in deliberate:  # a typo: refused before anything runs
            with pytest.raises(errors.ConfigErrors, match="selects no cluster"):
                load.load_fleet(after)
            return
        fleet = load.load_fleet(after)
        report = cycle(after, sink)
        limit = fleet.policies.delete_limit
        for name, keys in present.items():
            deleted = len(keys - set(sink.objects.get(name, {})))
            assert deleted == 0 or limit.allows(deleted, owned=owned[name])
        # what the edit means, exactly: each cluster holds the edited fleet's objects
        wanted = {
            f"c{c}": {f"s{i}" for i, env in enumerate(edited) if env == cluster_env}
            for c, cluster_env in enumerate(envs)
        }
        got = {c: {k.name for k in held} for c, held in sink.objects.items() if held}
        assert got == {c: names for c, names in wanted.items() if names}
        assert report.ok
    finally:
        shutil.rmtree(before)
        shutil.rmtree(after)

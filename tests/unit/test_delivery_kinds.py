"""The delivery-kind registry, proven by a delivery that exists only in the tests
(`tests.support.deliveries`): registered from here, it goes through load (its own settings),
plan (its own rule), render and the Git sink without a product module knowing of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from secretsync.core import errors
from secretsync.delivery import kinds
from secretsync.engine.cycle import Engine
from secretsync.fleet import load, plan
from secretsync.sinks.git.sink import GitSink
from tests.support import canary
from tests.support.deliveries import DigestKind, DigestSettings, registered
from tests.support.fakes import FakeSource

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"digest-key-0123456789abcdef01234"


@pytest.fixture
def digest_kind() -> Iterator[DigestKind]:
    with registered(DigestKind()) as kind:
        yield kind


FLEET = (
    "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: digests}\n"
    "spec: {sources: {vault: {kvMount: secret}}}\n"
)


def cluster(name: str, spec: str) -> str:
    return (
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {name}, labels: {{env: prod}}}}\nspec: {spec}\n"
    )


def secret(value: str, *, type_: str = "Opaque") -> str:
    return (
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: app}\n"
        "spec:\n  clusterSelector: {matchLabels: {env: prod}}\n"
        f"  target: {{name: app, namespace: web, type: {type_}}}\n"
        "  data:\n    token: {vault: {path: app/token, key: token}}\n"
        f"    mode: {{value: {value}}}\n    who: {{value: '{{{{ cluster.name }}}}'}}\n"
    )


def load_errors(root: Path) -> list[str]:
    with pytest.raises(errors.ConfigErrors) as info:
        plan.plan(load.load_fleet(root))
    return [e.render() for e in info.value.errors]


def test_a_delivery_registered_from_the_tests_goes_through_load_plan_render_and_git(
    fleet_repo: MakeRepo, digest_kind: DigestKind
) -> None:
    token = canary.new("digest-token")
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/d1.yaml": cluster("d1", "{delivery: digest, digests: {team: blue}}"),
            "clusters/d2.yaml": cluster("d2", "{delivery: digest, digests: {team: red}}"),
            "secrets/app.yaml": secret("literal"),
        }
    )
    fleet = load.load_fleet(root)
    assert fleet.clusters["d1"].settings == {"digest": DigestSettings("blue")}
    source = FakeSource({"app/token": {"token": token}})
    engine = Engine(
        sources={"vault": source},
        sinks=[GitSink(out_dir=root / "rendered")],
        hmac_key=KEY,
        clock=lambda: NOW,
    )
    report = asyncio.run(engine.run_cycle(fleet))
    assert report.ok, report.failures
    assert sorted(i.action for i in report.items) == ["create", "create"]
    for name, team in (("d1", "blue"), ("d2", "red")):
        text = (root / f"rendered/{name}/web/app.yaml").read_text()
        assert token not in text  # its needles went through the Git sink's plaintext check
        doc = yaml.safe_load(text)
        assert doc["kind"] == "SecretDigest"
        assert doc["metadata"]["annotations"]["test.secretsync.dev/team"] == team
        assert sorted(doc["digests"]) == ["mode", "token", "who"]
    assert len(source.reads) == 1  # it reads values: read once for both clusters
    again = asyncio.run(engine.run_cycle(load.load_fleet(root)))
    assert [i.action for i in again.items] == ["unchanged", "unchanged"]  # its hash is stable

    source.documents["app/token"] = {"token": canary.new("digest-token")}
    digest_kind.leak = True
    leaked = asyncio.run(engine.run_cycle(load.load_fleet(root)))
    assert {i.reason for i in leaked.items} == {
        f"rendered/{name}/web/app.yaml: refused to write a resolved secret value in plaintext"
        for name in ("d1", "d2")
    }
    for name in ("d1", "d2"):  # what the clusters had is kept
        assert yaml.safe_load((root / f"rendered/{name}/web/app.yaml").read_text())["kind"] == (
            "SecretDigest"
        )
        assert "token" not in yaml.safe_load((root / f"rendered/{name}/web/app.yaml").read_text())


def test_a_registered_deliverys_settings_and_plan_rule_are_checked_with_file_and_line(
    fleet_repo: MakeRepo, digest_kind: DigestKind
) -> None:
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/d1.yaml": cluster("d1", "{delivery: digest, digests: {team: 'b1ue'}}"),
            "clusters/d2.yaml": cluster("d2", "{delivery: digest}"),
            "secrets/app.yaml": secret("x"),
        }
    )
    found = load_errors(root)
    assert any("clusters/d1.yaml:4: spec.digests.team: must be letters only" in e for e in found)
    assert any("clusters/d2.yaml:4: spec.digests: required field is missing" in e for e in found)

    (root / "clusters/d1.yaml").write_text(cluster("d1", "{delivery: digest, digests: {team: a}}"))
    (root / "clusters/d2.yaml").unlink()
    (root / "secrets/app.yaml").write_text(secret("x", type_="kubernetes.io/tls"))
    [problem] = load_errors(root)
    assert problem == (
        "secrets/app.yaml:6: spec.target.type: cluster 'd1' takes no digest of a TLS Secret"
    )


def test_the_loader_offers_every_registered_delivery_and_only_those(
    fleet_repo: MakeRepo, digest_kind: DigestKind
) -> None:
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/d1.yaml": cluster("d1", "{delivery: dgest}"),
            "secrets/app.yaml": secret("x"),
        }
    )
    assert (
        "clusters/d1.yaml:4: spec.delivery: must be one of: sealed, external, direct, digest"
        in (load_errors(root))
    )
    kinds.unregister(digest_kind.name)
    (root / "clusters/d1.yaml").write_text(cluster("d1", "{delivery: digest}"))
    assert "clusters/d1.yaml:4: spec.delivery: must be one of: sealed, external, direct" in (
        load_errors(root)
    )


NOW = datetime(2026, 12, 7, tzinfo=UTC)

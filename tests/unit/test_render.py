"""Offline render through the engine and the Git sink, with a fake source."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretsync.core import errors
from secretsync.core.model import ObjectKey
from secretsync.delivery import kinds as delivery_kinds
from secretsync.delivery import materialize, rendered, seal, sealed
from secretsync.fleet import load, plan
from secretsync.sinks.git.sink import GitSink
from secretsync.sources import resolve
from tests.support import canary, cycles, fleets
from tests.support.fakes import FakeSource

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"test-hmac-key-0123456789abcdef"


def doc(root: Path, rel: str) -> dict[str, Any]:
    loaded = yaml.safe_load((root / "rendered" / rel).read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_render_writes_one_folder_per_cluster_with_kustomization(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    report, _ = cycles.render(root, FakeSource(fleets.vault_docs()))
    assert report.ok, report.failures
    files = set(cycles.snapshot(root / "rendered"))
    assert files == {
        "prod-use1/payments/db-credentials.yaml",
        "prod-use1/web/api-keys.yaml",
        "prod-use1/kustomization.yaml",
        "prod-euw1/payments/db-credentials.yaml",
        "prod-euw1/web/api-keys.yaml",
        "prod-euw1/kustomization.yaml",
        "staging-use1/web/api-keys.yaml",
        "staging-use1/kustomization.yaml",
        "staging-euw1/payments/db-credentials.yaml",
        "staging-euw1/web/api-keys.yaml",
        "staging-euw1/kustomization.yaml",
    }, "direct cluster dev-use1 must get nothing in Git"
    kust = doc(root, "prod-use1/kustomization.yaml")
    assert kust["resources"] == ["payments/db-credentials.yaml", "web/api-keys.yaml"]


def test_each_sealed_secret_opens_only_with_its_own_cluster_key(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    for cluster in fleets.SEALED:
        manifest = doc(root, f"{cluster}/web/api-keys.yaml")
        meta = manifest["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "secretsync"
        assert meta["labels"]["secretsync.dev/fleet-secret"] == "web-api"
        assert meta["annotations"]["secretsync.dev/cluster"] == cluster
        assert meta["annotations"]["sealedsecrets.bitnami.com/namespace-wide"] == "true"
        assert manifest["spec"]["template"]["metadata"] == meta
        own = fleets.private_key_for(cluster)
        opened = seal.unseal_manifest(manifest, [own])  # type: ignore[list-item]
        env = "prod" if cluster.startswith("prod") else "staging"
        assert opened == {"token": str(docs[f"web/{env}"]["token"]).encode()}
        for other in fleets.SEALED:
            if other != cluster:
                with pytest.raises(errors.SealError):
                    seal.unseal_manifest(manifest, [fleets.private_key_for(other)])  # type: ignore[list-item]


def test_overlays_reach_the_right_clusters(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    eu = seal.unseal_manifest(
        doc(root, "prod-euw1/payments/db-credentials.yaml"),
        [fleets.private_key_for("prod-euw1")],  # type: ignore[list-item]
    )
    assert eu == {
        "username": str(docs["payments/prod/db"]["username"]).encode(),
        "password": str(docs["payments/eu/db"]["password"]).encode(),
        "region": b"eu-west-1",
        "pool-size": b"50",
    }
    us = seal.unseal_manifest(
        doc(root, "prod-use1/payments/db-credentials.yaml"),
        [fleets.private_key_for("prod-use1")],  # type: ignore[list-item]
    )
    assert us["password"] == str(docs["payments/prod/db"]["password"]).encode()


def test_external_secret_names_paths_and_carries_no_values(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    source = FakeSource(fleets.vault_docs())
    cycles.render(root, source)
    manifest = doc(root, "staging-euw1/payments/db-credentials.yaml")
    assert manifest["apiVersion"] == "external-secrets.io/v1"
    spec = manifest["spec"]
    assert spec["secretStoreRef"] == {"kind": "ClusterSecretStore", "name": "vault"}
    assert spec["data"] == [
        {
            "secretKey": "password",
            "remoteRef": {"key": "payments/staging/db", "property": "password"},
        },
        {
            "secretKey": "username",
            "remoteRef": {"key": "payments/staging/db", "property": "username"},
        },
    ]
    assert spec["target"]["template"]["mergePolicy"] == "Merge"
    assert spec["target"]["template"]["data"] == {"region": "eu-west-1"}
    assert all(loc.path != "payments/staging/db" for loc in source.reads), "external reads nothing"


def test_second_render_changes_nothing(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    before = cycles.snapshot(root / "rendered")
    report, sink = cycles.render(root, FakeSource(docs))
    assert cycles.snapshot(root / "rendered") == before
    assert sink.files_changed == 0
    assert report.writes == 0 and report.seals == 0
    assert {i.action for i in report.items} == {"unchanged"}


def test_one_changed_value_changes_one_file_and_one_key(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    before = cycles.snapshot(root / "rendered")
    docs["payments/eu/db"] = {"password": canary.new("pw-eu-rotated")}
    report, sink = cycles.render(root, FakeSource(docs))
    after = cycles.snapshot(root / "rendered")
    changed = [k for k in after if after[k] != before.get(k)]
    assert changed == ["prod-euw1/payments/db-credentials.yaml"]
    assert sink.files_changed == 1 and report.seals == 1
    old = yaml.safe_load(before[changed[0]])["spec"]["encryptedData"]
    new = yaml.safe_load(after[changed[0]])["spec"]["encryptedData"]
    assert [k for k in new if new[k] != old[k]] == ["password"]
    (item,) = [i for i in report.items if i.action == "update"]
    assert item.keys.changed == ("password",)


def test_without_hmac_key_sealed_output_changes(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs), key=b"one-random-key")
    before = cycles.snapshot(root / "rendered")
    cycles.render(root, FakeSource(docs), key=b"another-random-key")
    assert cycles.snapshot(root / "rendered") != before


def test_removed_fleet_secret_is_pruned_but_foreign_files_stay(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    foreign = root / "rendered/prod-use1/web/configmap.yaml"
    foreign.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: web}\n")
    kpath = root / "rendered/prod-use1/kustomization.yaml"
    kust = yaml.safe_load(kpath.read_text())
    kust["resources"].append("web/configmap.yaml")
    kpath.write_text(yaml.safe_dump(kust))
    (root / "secrets/api.yaml").unlink()
    report, _ = cycles.render(root, FakeSource(docs))
    deleted = sorted(
        str(ObjectKey(i.cluster, i.namespace, i.name)) for i in report.items if i.action == "delete"
    )
    assert deleted == [
        "prod-euw1/web/api-keys",
        "prod-use1/web/api-keys",
        "staging-euw1/web/api-keys",
        "staging-use1/web/api-keys",
    ]
    assert foreign.exists()
    assert yaml.safe_load(kpath.read_text())["resources"] == [
        "payments/db-credentials.yaml",
        "web/configmap.yaml",
    ]
    assert not (root / "rendered/staging-use1").exists()


def test_cluster_leaving_the_fleet_is_pruned(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    clusters = (root / "clusters/all.yaml").read_text().split("---\n")
    (root / "clusters/all.yaml").write_text(
        "---\n".join(c for c in clusters if "staging-use1" not in c)
    )
    report, _ = cycles.render(root, FakeSource(docs))
    assert [i.cluster for i in report.items if i.action == "delete"] == ["staging-use1"]
    assert not (root / "rendered/staging-use1").exists()


def test_failing_source_keeps_last_known_good(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    before = cycles.snapshot(root / "rendered")
    docs["web/prod"] = {"token": canary.new("tok-prod-2")}
    source = FakeSource(docs)
    source.failing["payments/prod/db"] = errors.SourceUnavailable(
        "vault:secret/payments/prod/db: sealed"
    )
    report, _ = cycles.render(root, source)
    after = cycles.snapshot(root / "rendered")
    assert (
        after["prod-use1/payments/db-credentials.yaml"]
        == before["prod-use1/payments/db-credentials.yaml"]
    )
    assert after["prod-use1/kustomization.yaml"] == before["prod-use1/kustomization.yaml"]
    assert after["prod-use1/web/api-keys.yaml"] != before["prod-use1/web/api-keys.yaml"]
    failed = {(i.cluster, i.name) for i in report.failures}
    assert failed == {("prod-use1", "db-credentials"), ("prod-euw1", "db-credentials")}
    assert all("sealed" in i.reason for i in report.failures)


def test_each_unique_ref_is_read_once(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    source = FakeSource(fleets.vault_docs())
    report, _ = cycles.render(root, source)
    paths = [loc.path for loc in source.reads]
    assert sorted(paths) == sorted(set(paths))
    assert report.reads == len(paths)
    assert "payments/prod/db" in paths


def test_plaintext_guard_refuses_a_leaking_object(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    value = canary.new("leak")
    sink = GitSink(out_dir=root / "rendered")
    fleet = load.load_fleet(root)
    cluster = fleet.clusters["prod-use1"]
    asyncio.run(sink.observe(cluster))
    for form in (value, base64.b64encode(value.encode()).decode()):
        leaking = rendered.Rendered(
            key=ObjectKey("prod-use1", "web", "leak"),
            fleet_secret="x",
            delivery=cluster.delivery,
            kind="SealedSecret",
            content_hash="h",
            key_hashes={},
            manifest={"metadata": {"annotations": {"oops": form}}},
            needles=tuple(materialize.SecretValue.of(value).needles()),
        )
        from secretsync.sinks.deliver import ChangeSet

        result = asyncio.run(sink.apply(cluster, ChangeSet(create=[leaking])))
        assert "refused to write a resolved secret value" in result.failed[leaking.key]
        assert not (root / "rendered/prod-use1/web/leak.yaml").exists()
        assert not list((root / "rendered").rglob("*.tmp"))


def test_expired_certificate_fails_its_cluster_and_keeps_files(fleet_repo: MakeRepo) -> None:
    from datetime import timedelta

    from tests.support import keys

    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    before = cycles.snapshot(root / "rendered")
    past = datetime.now(UTC) - timedelta(days=10)
    (root / "certs/prod-use1.pem").write_bytes(
        keys.cert_pem(keys.rsa_key(0), not_before=past - timedelta(days=1), not_after=past)
    )
    docs["web/prod"] = {"token": canary.new("tok-new")}
    report, _ = cycles.render(root, FakeSource(docs))
    assert (
        cycles.snapshot(root / "rendered")["prod-use1/web/api-keys.yaml"]
        == before["prod-use1/web/api-keys.yaml"]
    )
    reasons = {i.reason for i in report.failures if i.cluster == "prod-use1"}
    assert reasons and all("certs/prod-use1.pem: certificate expired" in r for r in reasons)


def test_pinned_certificate_swapped_after_the_fleet_loaded_fails_its_cluster(
    fleet_repo: MakeRepo,
) -> None:
    from tests.support import keys

    root = fleets.write_fleet(fleet_repo)
    pin = seal.certificate_sha256((root / "certs/prod-use1.pem").read_bytes(), source="x")
    clusters = root / "clusters/all.yaml"
    clusters.write_text(
        clusters.read_text().replace(
            "{certFile: certs/prod-use1.pem}",
            f"{{certFile: certs/prod-use1.pem, certificateSha256: {pin}}}",
        )
    )
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    before = cycles.snapshot(root / "rendered")
    fleet = load.load_fleet(root)  # the daemon's last good fleet
    (root / "certs/prod-use1.pem").write_bytes(keys.cert_pem(keys.rsa_key(7)))
    docs["web/prod"] = {"token": canary.new("tok-swapped")}
    report = cycles.run(fleet, docs, GitSink(out_dir=root / "rendered"))
    after = cycles.snapshot(root / "rendered")
    assert after["prod-use1/web/api-keys.yaml"] == before["prod-use1/web/api-keys.yaml"]
    reasons = {i.reason for i in report.failures if i.cluster == "prod-use1"}
    assert reasons and all("not the pinned" in r for r in reasons), reasons


ODD = st.one_of(
    st.text(min_size=0, max_size=40),
    st.sampled_from(
        [
            "",
            "line1\nline2\n",
            "'quoted' \"double\"",
            "---\nkind: Secret",
            "  spaced  ",
            "üñíçødé ✓",
            "{{ .password }}",
            "key: value",
        ]
    ),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=ODD)
def test_any_value_renders_without_leaking_and_unseals_byte_for_byte(
    fleet_repo: MakeRepo, value: str
) -> None:
    secret = canary.remember(f"cv{value}")
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    docs["web/prod"] = {"token": secret}
    cycles.render(root, FakeSource(docs))
    raw = (root / "rendered/prod-use1/web/api-keys.yaml").read_bytes()
    assert canary.find_in_text(raw.decode()) == []
    manifest = yaml.safe_load(raw)
    opened = seal.unseal_manifest(manifest, [fleets.private_key_for("prod-use1")])  # type: ignore[list-item]
    assert opened["token"] == secret.encode()


def test_values_too_large_for_a_secret_are_refused_before_sealing(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    cycles.render(root, FakeSource(docs))
    before = cycles.snapshot(root / "rendered")
    docs["web/prod"] = {"token": canary.new("big") + "x" * (1024 * 1024)}
    report, _ = cycles.render(root, FakeSource(docs))
    assert cycles.snapshot(root / "rendered") == before
    reasons = {(i.cluster, i.reason) for i in report.failures}
    assert {c for c, _ in reasons} == {"prod-use1", "prod-euw1"}
    assert all("over the 1048576 byte limit of a Secret" in r for _, r in reasons)


def test_content_hash_of_is_the_hash_render_gives(fleet_repo: MakeRepo) -> None:
    """The engine compares `content_hash_of` with what a sink holds and renders only on a
    difference: for every delivery (with and without recorded source versions) it must be
    the very hash `render` puts on the object."""
    root = fleets.write_fleet(fleet_repo)
    fleet = load.load_fleet(root)
    desired = plan.plan(fleet)
    resolution = asyncio.run(
        resolve.resolve(
            (r for d in desired for r in d.refs()), {"vault": FakeSource(fleets.vault_docs())}
        )
    )
    deliveries = set()
    for d in desired:
        values = rendered.values_for(d, resolution.values)
        assert values is not None
        certificate = None
        cert_file = sealed.settings(d.cluster).cert_file
        if cert_file is not None:
            pem = (root / cert_file).read_bytes()
            certificate = seal.load_certificate(pem, source=cert_file, now=datetime.now(UTC))
        for versions in ({}, {"secret/x": "3"}):
            ctx = rendered.RenderContext(hmac_key=KEY, certificate=certificate, versions=versions)
            assert (
                materialize.content_hash_of(d, values, ctx=ctx)
                == materialize.render(d, values, ctx=ctx).content_hash
            ), (d.key, d.delivery)
        deliveries.add(d.delivery)
    assert deliveries == set(delivery_kinds.kinds())

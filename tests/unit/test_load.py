"""The loader: every error names file, line and field; good fleets load into the model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from secretsync.core import errors
from secretsync.core.model import (
    DeleteLimit,
    Operator,
    Scope,
    SopsSpec,
    VaultSpec,
    VaultTransitKey,
)
from secretsync.delivery import seal, sealed
from secretsync.fleet import load, repopath
from secretsync.fleet.load import files as load_files

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
spec:
  defaults: {delivery: sealed}
"""

CLUSTER = """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata:
  name: prod-use1
  labels: {env: prod, region: us-east-1}
spec:
  sealedSecrets: {certFile: certs/prod-use1.pem}
"""

SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: db}
spec:
  clusterSelector:
    matchLabels: {env: prod}
  target: {name: db, namespace: payments}
  data:
    password: {vault: {path: "db/{{ cluster.labels.env }}", key: password}}
"""

MakeRepo = Callable[[dict[str, str | bytes]], Path]


def load_errors(make: MakeRepo, files: dict[str, str | bytes]) -> list[str]:
    root = make({"secretsync.yaml": FLEET, **files})
    with pytest.raises(errors.ConfigErrors) as info:
        load.load_fleet(root)
    return [e.render() for e in info.value.errors]


def test_good_fleet_loads(fleet_repo: MakeRepo) -> None:
    root = fleet_repo(
        {"secretsync.yaml": FLEET, "clusters/a.yaml": CLUSTER, "secrets/x/db.yaml": SECRET}
    )
    fleet = load.load_fleet(root)
    assert list(fleet.clusters) == ["prod-use1"]
    cluster = fleet.clusters["prod-use1"]
    assert cluster.delivery == "sealed"
    assert cluster.labels == {"env": "prod", "region": "us-east-1"}
    secret = fleet.secrets["db"]
    assert secret.target.scope is Scope.STRICT
    spec = secret.data["password"].spec
    assert spec == VaultSpec("db/{{ cluster.labels.env }}", "password")
    assert secret.data["password"].origin.line == 9
    assert secret.selector.requirements[0].operator is Operator.IN


def test_several_documents_per_file(fleet_repo: MakeRepo) -> None:
    two = CLUSTER + "---\n" + CLUSTER.replace("prod-use1", "prod-euw1")
    root = fleet_repo({"secretsync.yaml": FLEET, "clusters/all.yaml": two})
    assert set(load.load_fleet(root).clusters) == {"prod-use1", "prod-euw1"}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "clusters/a.yaml": CLUSTER.replace(
                    "  name: prod-use1\n", "  name: prod-use1\n  extra: 1\n"
                )
            },
            "clusters/a.yaml:5: metadata.extra: unknown field",
        ),
        (
            {"clusters/a.yaml": CLUSTER + "  bogus: true\n"},
            "clusters/a.yaml:8: spec.bogus: unknown field",
        ),
        (
            {
                "clusters/a.yaml": CLUSTER.replace(
                    "apiVersion: secretsync.dev/v1alpha1", "apiVersion: v1"
                )
            },
            "clusters/a.yaml:1: apiVersion: must be secretsync.dev/v1alpha1",
        ),
        (
            {"clusters/a.yaml": CLUSTER.replace("kind: Cluster", "kind: Clutser")},
            "clusters/a.yaml:2: kind: must be Fleet, Cluster or FleetSecret",
        ),
        (
            {"clusters/a.yaml": CLUSTER.replace("name: prod-use1", "name: Prod_1")},
            "clusters/a.yaml:4: metadata.name: cluster name must be a DNS label",
        ),
        (
            {"clusters/a.yaml": CLUSTER.replace("env: prod", "env: true")},
            "clusters/a.yaml:5: metadata.labels.env: must be a string",
        ),
        (
            {
                "clusters/a.yaml": CLUSTER.replace(
                    "  sealedSecrets: {certFile: certs/prod-use1.pem}\n",
                    "  delivery: carrier-pigeon\n  sealedSecrets: {certFile: c.pem}\n",
                )
            },
            "clusters/a.yaml:7: spec.delivery: must be one of: sealed, external, direct",
        ),
        (
            {
                "clusters/a.yaml": CLUSTER.replace(
                    "{certFile: certs/prod-use1.pem}", "{certFile: ../outside.pem}"
                )
            },
            "clusters/a.yaml:7: spec.sealedSecrets.certFile: '../outside.pem' leaves the fleet repo",
        ),
        (
            {
                "clusters/a.yaml": CLUSTER.replace(
                    "  sealedSecrets: {certFile: certs/prod-use1.pem}\n", "  delivery: sealed\n"
                )
            },
            "spec.sealedSecrets.certFile: a sealed cluster needs a certificate file",
        ),
        (
            {"clusters/a.yaml": CLUSTER + "  allowedNamespaces: [Bad_NS]\n"},
            "clusters/a.yaml:8: spec.allowedNamespaces: 'Bad_NS' is not a valid namespace name",
        ),
        (
            {"clusters/a.yaml": CLUSTER + "  kubeconfig: {path: /k, inCluster: true}\n"},
            "clusters/a.yaml:8: spec.kubeconfig: must have exactly one of secretRef, path or inCluster",
        ),
        (
            {"clusters/a.yaml": "a: [\n"},
            "clusters/a.yaml:2: invalid YAML",
        ),
        (
            {"clusters/a.yaml": CLUSTER + "spec: {}\n"},
            "clusters/a.yaml:8: spec: duplicate key (first on line 6)",
        ),
        (
            {"clusters/a.yaml": CLUSTER, "clusters/b.yaml": CLUSTER},
            "clusters/b.yaml:1: metadata.name: cluster 'prod-use1' is also defined at clusters/a.yaml:1",
        ),
        (
            {"secrets/s.yaml": SECRET.replace("  target: {name: db, namespace: payments}\n", "")},
            "secrets/s.yaml:4: spec.target: required field is missing",
        ),
        (
            {"secrets/s.yaml": SECRET.replace("name: db, namespace", "name: DB!, namespace")},
            "secrets/s.yaml:7: spec.target.name: must be a DNS subdomain name",
        ),
        (
            {"secrets/s.yaml": SECRET.replace("password: {vault", "pass/word: {vault")},
            "secrets/s.yaml:9: spec.data.pass/word: invalid Secret key",
        ),
        (
            {"secrets/s.yaml": SECRET.replace("{vault: {path", "{value: x, vault: {path")},
            "secrets/s.yaml:9: spec.data.password: must have exactly one of vault, sops or value",
        ),
        (
            {"secrets/s.yaml": SECRET.replace("key: password}", "key: password, version: 0}")},
            "secrets/s.yaml:9: spec.data.password.vault.version: must be at least 1",
        ),
        (
            {"secrets/s.yaml": SECRET.replace("key: password}", "key: password, colour: red}")},
            "secrets/s.yaml:9: spec.data.password.vault.colour: unknown field",
        ),
        (
            {
                "secrets/s.yaml": SECRET.replace(
                    "db/{{ cluster.labels.env }}", "db/{{ cluster.uid }}"
                )
            },
            "secrets/s.yaml:9: spec.data.password.vault.path: template {{ cluster.uid }} is not allowed",
        ),
        (
            {
                "secrets/s.yaml": SECRET.replace(
                    '{vault: {path: "db/{{ cluster.labels.env }}", key: password}}',
                    "{sops: {file: /etc/passwd, key: k}}",
                )
            },
            "secrets/s.yaml:9: spec.data.password.sops.file: '/etc/passwd' must be a path relative to the fleet repo",
        ),
        (
            {
                "secrets/s.yaml": SECRET.replace(
                    "matchLabels: {env: prod}", "matchExpressions: [{key: env, operator: In}]"
                )
            },
            "secrets/s.yaml:6: spec.clusterSelector.matchExpressions[0].values: operator In needs at least one value",
        ),
        (
            {
                "secrets/s.yaml": SECRET.replace(
                    "matchLabels: {env: prod}",
                    "matchExpressions: [{key: env, operator: Exists, values: [a]}]",
                )
            },
            "secrets/s.yaml:6: spec.clusterSelector.matchExpressions[0].values: operator Exists takes no values",
        ),
        (
            {"secrets/s.yaml": SECRET + "  overlays:\n    - data: {password: {value: x}}\n"},
            "secrets/s.yaml:11: spec.overlays[0]: an overlay needs exactly one of clusterSelector or clusters",
        ),
        (
            {
                "secrets/s.yaml": SECRET
                + "  overlays:\n    - clusters: [ghost]\n      data: {password: {value: x}}\n"
            },
            "secrets/s.yaml:11: spec.overlays.clusters: overlay names unknown cluster 'ghost'",
        ),
        (
            {
                "secrets/s.yaml": SECRET.replace(
                    "namespace: payments}", "namespace: payments, scope: galaxy-wide}"
                )
            },
            "secrets/s.yaml:7: spec.target.scope: must be one of: strict, namespace-wide, cluster-wide",
        ),
        (
            {
                "secrets/s.yaml": SECRET.replace(
                    "namespace: payments}", "namespace: payments, labels: {secretsync.dev/x: y}}"
                )
            },
            "secrets/s.yaml:7: spec.target.labels: 'secretsync.dev/x' is reserved",
        ),
        (
            {
                "secrets/s.yaml": SECRET.replace(
                    "namespace: payments}", "namespace: payments, labels: {team: web platform}}"
                )
            },
            "secrets/s.yaml:7: spec.target.labels.team: label value 'web platform' is invalid",
        ),
        (
            {
                "secrets/s.yaml": SECRET.replace(
                    "namespace: payments}", "namespace: payments, annotations: {bad key!: x}}"
                )
            },
            "secrets/s.yaml:7: spec.target.annotations.bad key!: annotation key 'bad key!' is invalid",
        ),
        (
            {"secrets/s.yaml": SECRET + "  refreshInterval: soon\n"},
            "secrets/s.yaml:10: spec.refreshInterval: must be a duration",
        ),
        (
            {
                "secrets/s.yaml": SECRET.replace(
                    "  clusterSelector:\n    matchLabels: {env: prod}\n", ""
                )
            },
            "secrets/s.yaml:4: spec.clusterSelector: required field is missing",
        ),
        (
            {"secrets/s.yaml": SECRET, "secrets/t.yaml": SECRET},
            "secrets/t.yaml:1: metadata.name: FleetSecret 'db' is also defined at secrets/s.yaml:1",
        ),
        (
            {"clusters/a.yaml": FLEET},
            "clusters/a.yaml:1: kind: a Fleet belongs in secretsync.yaml",
        ),
    ],
)
def test_loader_error_names_file_line_and_field(
    fleet_repo: MakeRepo, files: dict[str, str | bytes], expected: str
) -> None:
    found = load_errors(fleet_repo, files)
    assert any(expected in e for e in found), found


def test_all_errors_are_reported_together(fleet_repo: MakeRepo) -> None:
    found = load_errors(
        fleet_repo,
        {
            "clusters/a.yaml": CLUSTER + "  bogus: 1\n",
            "secrets/s.yaml": SECRET + "  other: 2\n",
        },
    )
    assert len(found) == 2


def test_fleet_file_errors(fleet_repo: MakeRepo) -> None:
    root = fleet_repo({"secretsync.yaml": FLEET + "  sources: {vault: {kvVersion: 3}}\n"})
    with pytest.raises(errors.ConfigErrors) as info:
        load.load_fleet(root)
    assert "secretsync.yaml:6: spec.sources.vault.kvVersion: must be 1 or 2" in info.value.render()


def test_missing_fleet_file(fleet_repo: MakeRepo) -> None:
    root = fleet_repo({"clusters/a.yaml": CLUSTER})
    with pytest.raises(errors.ConfigErrors, match=r"secretsync.yaml: file not found"):
        load.load_fleet(root)


def test_alias_bomb_is_refused_quickly(fleet_repo: MakeRepo) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    bomb = "\n".join(lines) + "\n"
    found = load_errors(fleet_repo, {"clusters/bomb.yaml": bomb})
    assert any("clusters/bomb.yaml" in e and "alias bomb" in e for e in found), found


def test_oversized_file_is_refused(fleet_repo: MakeRepo) -> None:
    big = "# " + "x" * (load.MAX_FILE_BYTES + 10) + "\n"
    found = load_errors(fleet_repo, {"clusters/big.yaml": big})
    assert any("clusters/big.yaml: file is larger than" in e for e in found), found


def test_symlink_leaving_the_repo_is_refused(fleet_repo: MakeRepo, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text(CLUSTER)
    root = fleet_repo({"secretsync.yaml": FLEET})
    (root / "clusters").mkdir()
    os.symlink(outside, root / "clusters" / "link.yaml")
    with pytest.raises(errors.ConfigErrors, match="resolves outside the fleet repo"):
        load.load_fleet(root)


def test_symlinked_sops_file_leaving_the_repo_is_refused_at_load(
    fleet_repo: MakeRepo, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("x: not in the repo\n")
    secret = SECRET.replace(
        '{vault: {path: "db/{{ cluster.labels.env }}", key: password}}',
        "{sops: {file: sops/link.yaml, key: x}}",
    )
    root = fleet_repo(
        {"secretsync.yaml": FLEET, "clusters/a.yaml": CLUSTER, "secrets/s.yaml": secret}
    )
    (root / "sops").mkdir()
    os.symlink(outside, root / "sops" / "link.yaml")
    os.symlink(root / "sops" / "loop.yaml", root / "sops" / "loop.yaml")
    looped = secret.replace("sops/link.yaml", "sops/loop.yaml").replace("{name: db}", "{name: db2}")
    (root / "secrets" / "t.yaml").write_text(looped.replace("name: db,", "name: db2,"))
    with pytest.raises(errors.ConfigErrors) as info:
        load.load_fleet(root)
    assert [e.render() for e in info.value.errors] == [
        "secrets/s.yaml:9: spec.data.password.sops.file: 'sops/link.yaml' resolves outside the "
        "fleet repo (symlink?)",
        "secrets/t.yaml:9: spec.data.password.sops.file: 'sops/loop.yaml' cannot be resolved "
        "(symlink loop?)",
    ]


def test_symlink_inside_the_repo_and_a_missing_sops_file_load(
    fleet_repo: MakeRepo, tmp_path: Path
) -> None:
    """Confinement refuses only what leaves the repo: a link inside it, or a file that does not
    exist yet (a per-secret failure when read), loads."""
    secret = SECRET.replace(
        '{vault: {path: "db/{{ cluster.labels.env }}", key: password}}',
        "{sops: {file: sops/link.yaml, key: x}}",
    )
    missing = secret.replace("sops/link.yaml", "sops/missing.yaml").replace(
        "{name: db}", "{name: d2}"
    )
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET,
            "clusters/a.yaml": CLUSTER,
            "secrets/s.yaml": secret,
            "secrets/t.yaml": missing.replace("name: db,", "name: d2,"),
            "sops/real.yaml": "x: y\n",
        }
    )
    os.symlink(root / "sops" / "real.yaml", root / "sops" / "link.yaml")
    assert sorted(load.load_fleet(root).secrets) == ["d2", "db"]


def test_file_count_cap_bounds_the_walk(
    fleet_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file and folder walked counts, YAML or not (the real cap of 20,000 is exercised
    through the CLI in tests/e2e/test_hostile_cli.py)."""
    monkeypatch.setattr(load_files, "MAX_FILES", 30)
    files: dict[str, str | bytes] = {"secretsync.yaml": FLEET, "clusters/a.yaml": CLUSTER}
    files.update({f"secrets/notes/{i}.txt": "x" for i in range(29)})
    assert load.load_fleet(fleet_repo(files)).clusters  # 29 files + 1 folder: at the cap
    files["secrets/notes/extra.md"] = "x"
    found = load_errors(fleet_repo, files)
    assert found == ["secrets: more than 30 files and folders under 'secrets'"], found


def test_certificate_pin_is_checked_when_the_fleet_loads(fleet_repo: MakeRepo) -> None:
    from tests.support import keys

    pem = keys.cert_pem(keys.rsa_key(0))
    actual = seal.certificate_sha256(pem, source="x")
    colons = ":".join(actual[i : i + 2] for i in range(0, 64, 2)).upper()
    pinned = CLUSTER.replace(
        "certFile: certs/prod-use1.pem}",
        f'certFile: certs/prod-use1.pem, certificateSha256: "{colons}"}}',
    )
    files: dict[str, str | bytes] = {"clusters/a.yaml": pinned, "certs/prod-use1.pem": pem}
    root = fleet_repo({"secretsync.yaml": FLEET, **files})
    assert sealed.settings(load.load_fleet(root).clusters["prod-use1"]).cert_sha256 == actual

    other = "ab" * 32
    found = load_errors(fleet_repo, {**files, "clusters/a.yaml": pinned.replace(colons, other)})
    assert found == [
        "clusters/a.yaml:7: spec.sealedSecrets.certificateSha256: certs/prod-use1.pem: "
        f"certificate SHA-256 is {actual}, not the pinned {other} (certificateSha256): it was "
        "replaced or rotated; check it and update the pin"
    ]
    found = load_errors(fleet_repo, {**files, "clusters/a.yaml": pinned.replace(colons, "abc")})
    assert found == [
        "clusters/a.yaml:7: spec.sealedSecrets.certificateSha256: must be a SHA-256 "
        "fingerprint: 64 hex digits (colons allowed)"
    ]
    found = load_errors(fleet_repo, {"clusters/a.yaml": pinned})  # no certificate file
    assert found == [
        "clusters/a.yaml:7: spec.sealedSecrets.certificateSha256: certs/prod-use1.pem: "
        "file not found"
    ]
    found = load_errors(
        fleet_repo,
        {**files, "clusters/a.yaml": pinned.replace("certFile: certs/prod-use1.pem, ", "")},
    )
    assert "pins the certificate of certFile, which is not set" in found[0], found


def test_confine_refuses_dotdot_and_absolute(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="leaves the fleet repo"):
        repopath.confine(tmp_path, "a/../../b")
    with pytest.raises(errors.ConfigError, match="relative"):
        repopath.confine(tmp_path, "/etc/passwd")
    assert repopath.confine(tmp_path, "a/b.yaml") == (tmp_path / "a/b.yaml").resolve()


def test_sops_ref_shape(fleet_repo: MakeRepo) -> None:
    secret = SECRET.replace(
        '{vault: {path: "db/{{ cluster.labels.env }}", key: password}}',
        '{sops: {file: "sops/{{ cluster.labels.env }}.yaml", key: db.password}}',
    )
    secret += "  allowNoClusters: true\n"
    root = fleet_repo({"secretsync.yaml": FLEET, "secrets/s.yaml": secret})
    spec = load.load_fleet(root).secrets["db"].data["password"].spec
    assert spec == SopsSpec("sops/{{ cluster.labels.env }}.yaml", "db.password")


# --- safety rails: a selection that picks nothing is refused ---------------------------------


def test_a_selector_that_selects_no_cluster_is_an_error(fleet_repo: MakeRepo) -> None:
    """`env: prd` for `env: prod`: loading would otherwise plan the secret nowhere, and a
    render would prune it from every production cluster."""
    typo = SECRET.replace("{env: prod}", "{env: prd}")
    assert load_errors(fleet_repo, {"clusters/c.yaml": CLUSTER, "secrets/s.yaml": typo}) == [
        "secrets/s.yaml:5: spec.clusterSelector: selects no cluster of the fleet's 1 "
        "(set allowNoClusters: true if that is deliberate)"
    ]


def test_allow_no_clusters_makes_an_empty_selection_deliberate(fleet_repo: MakeRepo) -> None:
    typo = SECRET.replace("{env: prod}", "{env: prd}") + "  allowNoClusters: true\n"
    root = fleet_repo(
        {"secretsync.yaml": FLEET, "clusters/c.yaml": CLUSTER, "secrets/s.yaml": typo}
    )
    assert load.load_fleet(root).secrets["db"].allow_no_clusters


def test_an_overlay_that_reaches_none_of_its_clusters_is_an_error(fleet_repo: MakeRepo) -> None:
    other = CLUSTER.replace("prod-use1", "dev-use1").replace("env: prod", "env: dev")
    overlays = (
        "  overlays:\n"
        "    - clusterSelector: {matchLabels: {region: us-east-l}}\n"  # l for 1
        "      data: {a: {value: x}}\n"
        "    - clusters: [dev-use1]\n"  # a cluster of the fleet, not of this FleetSecret
        "      data: {b: {value: y}}\n"
        "    - clusters: [prod-use1]\n"
        "      data: {c: {value: z}}\n"
    )
    clusters = CLUSTER + "---\n" + other
    assert load_errors(
        fleet_repo, {"clusters/c.yaml": clusters, "secrets/s.yaml": SECRET + overlays}
    ) == [
        "secrets/s.yaml:11: spec.overlays.clusterSelector: the overlay selects none of the 1 "
        "cluster(s) this FleetSecret selects",
        "secrets/s.yaml:13: spec.overlays.clusters: the overlay selects none of the 1 "
        "cluster(s) this FleetSecret selects",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", DeleteLimit(count=3)), ("0", DeleteLimit(count=0)), ('"40%"', DeleteLimit(percent=40))],
)
def test_delete_limit_is_a_count_or_a_percentage(
    fleet_repo: MakeRepo, text: str, expected: DeleteLimit
) -> None:
    fleet = FLEET + f"  policies: {{deleteLimit: {text}}}\n"
    root = fleet_repo({"secretsync.yaml": fleet})
    assert load.load_fleet(root).policies.delete_limit == expected


def test_delete_limit_defaults_to_a_quarter(fleet_repo: MakeRepo) -> None:
    assert load.load_fleet(fleet_repo({"secretsync.yaml": FLEET})).policies.delete_limit == (
        DeleteLimit(percent=25)
    )


@pytest.mark.parametrize("text", ["-1", '"25"', '"101%"', '"25%\\n"', "1.5", "[1]"])
def test_a_bad_delete_limit_is_an_error(fleet_repo: MakeRepo, text: str) -> None:
    fleet = FLEET + f"  policies: {{deleteLimit: {text}}}\n"
    assert load_errors(fleet_repo, {"secretsync.yaml": fleet}) == [
        "secretsync.yaml:6: spec.policies.deleteLimit: must be a count of objects (0 or more) "
        'or a percentage such as "25%"'
    ]


@pytest.mark.parametrize(
    ("limit", "owned", "deletes", "allowed"),
    [
        (DeleteLimit(percent=25), 10, 2, True),
        (DeleteLimit(percent=25), 10, 3, False),
        (DeleteLimit(percent=25), 1, 1, True),  # one delete is always allowed
        (DeleteLimit(percent=0), 100, 1, True),
        (DeleteLimit(percent=0), 100, 2, False),
        (DeleteLimit(count=5), 6, 5, True),
        (DeleteLimit(count=5), 600, 6, False),
        (DeleteLimit(percent=100), 7, 7, True),
    ],
)
def test_delete_limit_allows(limit: DeleteLimit, owned: int, deletes: int, allowed: bool) -> None:
    assert limit.allows(deletes, owned=owned) is allowed


def fleet_with_sops(sops: str) -> str:
    return (
        FLEET + "  sources:\n    sops:\n" + "".join(f"      {line}\n" for line in sops.splitlines())
    )


def test_sops_key_policy_loads(fleet_repo: MakeRepo) -> None:
    root = fleet_repo(
        {
            "secretsync.yaml": fleet_with_sops(
                "keyTypes: [age, hc_vault, kms]\n"
                "vaultTransit:\n"
                "  - {address: 'https://vault.example:8200', enginePath: transit, keyName: sops}\n"
                "  - {address: 'http://127.0.0.1:8200'}\n"
                "awsKms: ['arn:aws:kms:us-east-1:111122223333:']"
            )
        }
    )
    sops = load.load_fleet(root).sops
    assert sops.key_types == {"age", "hc_vault", "kms"}
    assert sops.vault_transit == (
        VaultTransitKey(
            address="https://vault.example:8200", engine_path="transit", key_name="sops"
        ),
        VaultTransitKey(address="http://127.0.0.1:8200"),
    )
    assert sops.aws_kms == ("arn:aws:kms:us-east-1:111122223333:",)
    assert load.load_fleet(fleet_repo({"secretsync.yaml": FLEET})).sops.key_types == {"age", "pgp"}
    assert load.load_fleet_settings(root).sops == sops


@pytest.mark.parametrize(
    ("sops", "expected"),
    [
        (
            "keyTypes: [age, hckms]",
            "secretsync.yaml:8: spec.sources.sops.keyTypes: must be one of: age, pgp, hc_vault, kms, gcp_kms, azure_kv",
        ),
        (
            "keyTypes: [age, age]",
            "secretsync.yaml:8: spec.sources.sops.keyTypes: 'age' is listed twice",
        ),
        (
            "keyTypes: [hc_vault]",
            "secretsync.yaml:8: spec.sources.sops.vaultTransit: keyTypes allows hc_vault: list in vaultTransit every key SOPS files may name",
        ),
        (
            "vaultTransit: [{address: 'http://v:8200'}]",
            "secretsync.yaml:8: spec.sources.sops.vaultTransit: vaultTransit is given but keyTypes does not allow hc_vault",
        ),
        (
            "keyTypes: [gcp_kms]\ngcpKms: []",
            "secretsync.yaml:8: spec.sources.sops.gcpKms: keyTypes allows gcp_kms",
        ),
        (
            "keyTypes: [hc_vault]\nvaultTransit: [{address: 'http://me:pw@v:8200'}]",
            "secretsync.yaml:9: spec.sources.sops.vaultTransit[0].address: must be an http(s) URL",
        ),
        (
            "keyTypes: [hc_vault]\nvaultTransit: [{address: 'http://v:8200', token: x}]",
            "secretsync.yaml:9: spec.sources.sops.vaultTransit[0].token: unknown field",
        ),
        (
            "keyTypes: [azure_kv]\nazureKeyVault: ['https://a b/']",
            "secretsync.yaml:9: spec.sources.sops.azureKeyVault: must be an Azure Key Vault key URL",
        ),
    ],
)
def test_sops_key_policy_errors(fleet_repo: MakeRepo, sops: str, expected: str) -> None:
    root = fleet_repo({"secretsync.yaml": fleet_with_sops(sops)})
    with pytest.raises(errors.ConfigErrors) as info:
        load.load_fleet(root)
    rendered = [e.render() for e in info.value.errors]
    assert any(r.startswith(expected) for r in rendered), rendered


def test_a_controller_only_cluster_gets_its_certificate_file_inside_the_repo(
    fleet_repo: MakeRepo, tmp_path: Path
) -> None:
    """With only `sealedSecrets.controller`, the certificate lives in certs/<name>.pem, where
    `cluster refresh-cert` writes it: a `certs` symlink out of the repo is refused."""
    cluster = CLUSTER.replace(
        "  sealedSecrets: {certFile: certs/prod-use1.pem}\n",
        "  sealedSecrets: {controller: {namespace: kube-system}}\n",
    )
    root = fleet_repo({"secretsync.yaml": FLEET, "clusters/a.yaml": cluster})
    assert (
        sealed.settings(load.load_fleet(root).clusters["prod-use1"]).cert_file
        == "certs/prod-use1.pem"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "certs").symlink_to(outside)
    errors_seen = [e.render() for e in _errors_of(root)]
    assert len(errors_seen) == 1 and "spec.sealedSecrets.controller" in errors_seen[0]
    assert "resolves outside the fleet repo" in errors_seen[0]


def _errors_of(root: Path) -> list[errors.ConfigError]:
    with pytest.raises(errors.ConfigErrors) as info:
        load.load_fleet(root)
    return info.value.errors

"""Planning: selectors pick clusters, overlays layer in order, templates fill, policy holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from secretsync.core import errors
from secretsync.core.model import Literal, Location, ValueRef
from secretsync.fleet import load, plan

MakeRepo = Callable[[dict[str, str | bytes]], Path]

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
spec:
  defaults: {delivery: sealed}
  sources: {vault: {kvMount: kv}}
"""


def cluster(name: str, labels: str, extra: str = "") -> str:
    return f"""\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata:
  name: {name}
  labels: {{{labels}}}
spec:
  sealedSecrets: {{certFile: certs/{name}.pem}}
{extra}---
"""


CLUSTERS = (
    cluster("dev-use1", "env: dev, region: us-east-1")
    + cluster("prod-use1", "env: prod, region: us-east-1, tier: restricted")
    + cluster("prod-euw1", "env: prod, region: eu-west-1, tier: restricted")
)

SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: app}
spec:
  clusterSelector:
    matchExpressions: [{key: env, operator: In, values: [dev, prod]}]
  target: {name: app, namespace: web}
  data:
    password: {vault: {path: "app/{{ cluster.labels.env }}", key: password}}
    region: {value: "{{ cluster.labels.region }}"}
    level: {value: base}
  overlays:
    - clusterSelector: {matchLabels: {env: prod}}
      data:
        level: {value: environment}
    - clusters: [prod-euw1]
      data:
        level: {value: cluster}
        password: {vault: {path: app/eu, key: password, mount: kv, version: 3}}
"""


def planned(make: MakeRepo, files: dict[str, str | bytes]) -> dict[str, dict[str, object]]:
    fleet = load.load_fleet(make({"secretsync.yaml": FLEET, **files}))
    return {f"{d.cluster.name}/{d.fleet_secret}": dict(d.data) for d in plan.plan(fleet)}


def test_overlays_apply_in_order_later_wins(fleet_repo: MakeRepo) -> None:
    out = planned(fleet_repo, {"clusters/c.yaml": CLUSTERS, "secrets/app.yaml": SECRET})
    assert out["dev-use1/app"]["level"] == Literal("base")
    assert out["prod-use1/app"]["level"] == Literal("environment")
    assert out["prod-euw1/app"]["level"] == Literal("cluster")
    assert out["prod-use1/app"]["password"] == ValueRef(
        Location("vault", "app/prod", "kv"), "password"
    )
    assert out["prod-euw1/app"]["password"] == ValueRef(
        Location("vault", "app/eu", "kv", 3), "password"
    )
    assert out["prod-euw1/app"]["region"] == Literal("eu-west-1")


def test_selector_filters_and_cluster_filter(fleet_repo: MakeRepo) -> None:
    fleet = load.load_fleet(
        fleet_repo(
            {"secretsync.yaml": FLEET, "clusters/c.yaml": CLUSTERS, "secrets/app.yaml": SECRET}
        )
    )
    assert [d.cluster.name for d in plan.plan(fleet, clusters=["prod-use1"])] == ["prod-use1"]
    with pytest.raises(errors.ConfigErrors, match="unknown cluster 'nope'"):
        plan.plan(fleet, clusters=["nope"])


def plan_errors(make: MakeRepo, files: dict[str, str | bytes]) -> str:
    fleet = load.load_fleet(make({"secretsync.yaml": FLEET, **files}))
    with pytest.raises(errors.ConfigErrors) as info:
        plan.plan(fleet)
    return info.value.render()


def test_missing_label_in_template_names_cluster_and_line(fleet_repo: MakeRepo) -> None:
    secret = SECRET.replace("{{ cluster.labels.region }}", "{{ cluster.labels.tier }}")
    text = plan_errors(fleet_repo, {"clusters/c.yaml": CLUSTERS, "secrets/app.yaml": secret})
    assert "secrets/app.yaml:10: data.region.value: cluster 'dev-use1' has no label 'tier'" in text


def test_two_fleet_secrets_on_one_target_name_both(fleet_repo: MakeRepo) -> None:
    other = SECRET.replace("name: app}", "name: app2}")
    text = plan_errors(
        fleet_repo,
        {"clusters/c.yaml": CLUSTERS, "secrets/app.yaml": SECRET, "secrets/app2.yaml": other},
    )
    assert "FleetSecrets 'app' (secrets/app.yaml:1) and 'app2'" in text
    assert "web/app on cluster 'dev-use1'" in text


def test_allowed_namespaces_are_enforced(fleet_repo: MakeRepo) -> None:
    clusters = CLUSTERS.replace(
        "certs/prod-use1.pem}\n", "certs/prod-use1.pem}\n  allowedNamespaces: [payments]\n"
    )
    text = plan_errors(fleet_repo, {"clusters/c.yaml": clusters, "secrets/app.yaml": SECRET})
    assert (
        "secrets/app.yaml:7: spec.target.namespace: namespace 'web' is not in allowedNamespaces"
        in text
    )


def test_forbidden_type_and_cluster_wide_policy(fleet_repo: MakeRepo) -> None:
    fleet = FLEET + "  policies: {allowClusterWide: false}\n"
    secret = SECRET.replace(
        "{name: app, namespace: web}",
        "{name: app, namespace: web, type: kubernetes.io/service-account-token, scope: cluster-wide}",
    )
    root = fleet_repo(
        {"secretsync.yaml": fleet, "clusters/c.yaml": CLUSTERS, "secrets/a.yaml": secret}
    )
    with pytest.raises(errors.ConfigErrors) as info:
        plan.plan(load.load_fleet(root))
    text = info.value.render()
    assert (
        "spec.target.type: Secret type 'kubernetes.io/service-account-token' is forbidden" in text
    )
    assert "spec.target.scope: cluster-wide sealing scope is not allowed" in text


def test_external_cluster_refuses_sops_and_other_mounts(fleet_repo: MakeRepo) -> None:
    ext = """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {name: ext, labels: {env: prod, region: r1}}
spec:
  delivery: external
"""
    secret = SECRET.replace("level: {value: base}", "extra: {sops: {file: s.yaml, key: k}}")
    ext += "---\n" + cluster("prod-euw1", "env: dev, region: r2")
    text = plan_errors(fleet_repo, {"clusters/c.yaml": ext, "secrets/app.yaml": secret})
    assert "secrets/app.yaml:11: data.extra.sops: cluster 'ext' uses external delivery" in text
    assert "data.password.vault.mount: cluster 'ext' uses external delivery" not in text
    secret2 = SECRET.replace("mount: kv, version: 3", "mount: other")
    secret2 = secret2.replace(
        "clusters: [prod-euw1]", "clusterSelector: {matchLabels: {env: prod}}"
    )
    text = plan_errors(fleet_repo, {"clusters/c.yaml": ext, "secrets/app.yaml": secret2})
    assert (
        "data.password.vault.mount: cluster 'ext' uses external delivery, whose store reads only the kvMount 'kv'"
        in text
    )


def test_templated_sops_path_leaving_repo_is_refused(fleet_repo: MakeRepo) -> None:
    secret = SECRET.replace(
        'password: {vault: {path: "app/{{ cluster.labels.env }}", key: password}}',
        'password: {sops: {file: "{{ cluster.labels.env }}/../../x.yaml", key: k}}',
    )
    root = fleet_repo(
        {"secretsync.yaml": FLEET, "clusters/c.yaml": CLUSTERS, "secrets/a.yaml": secret}
    )
    with pytest.raises(errors.ConfigErrors, match=r"sops\.file: must stay inside the repo"):
        load.load_fleet(root)


def test_templated_sops_path_through_a_symlink_leaving_the_repo_is_refused(
    fleet_repo: MakeRepo, tmp_path: Path
) -> None:
    """A filled-in path is confined per cluster at plan time: `prod` reaches a symlink that
    leaves the repo, `dev` a file inside it. The whole plan is refused (exit 2 in the CLI)."""
    secret = SECRET.replace(
        'password: {vault: {path: "app/{{ cluster.labels.env }}", key: password}}',
        'password: {sops: {file: "sops/{{ cluster.labels.env }}.yaml", key: k}}',
    )
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET.replace("sealed", "direct"),
            "clusters/c.yaml": CLUSTERS,
            "secrets/a.yaml": secret,
            "sops/dev.yaml": "k: v\n",
        }
    )
    outside = tmp_path / "outside.yaml"
    outside.write_text("k: v\n")
    (root / "sops" / "prod.yaml").symlink_to(outside)
    fleet = load.load_fleet(root)
    with pytest.raises(errors.ConfigErrors) as info:
        plan.plan(fleet, clusters=["dev-use1"])  # a filter never hides an error
    assert [e.render() for e in info.value.errors] == [  # prod-euw1's overlay reads Vault
        "secrets/a.yaml:9: data.password.sops.file: cluster 'prod-use1': sops file "
        "'sops/prod.yaml' resolves outside the fleet repo (symlink?)"
    ]
    (root / "sops" / "prod.yaml").unlink()
    (root / "sops" / "prod.yaml").symlink_to(root / "sops" / "dev.yaml")
    assert len(plan.plan(fleet)) == 3


def test_external_cluster_needs_a_vault_key(fleet_repo: MakeRepo) -> None:
    ext = """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {name: ext, labels: {env: prod, region: r1}}
spec:
  delivery: external
"""
    literal_only = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: settings}
spec:
  clusterSelector: {}
  target: {name: settings, namespace: web}
  data:
    region: {value: "{{ cluster.labels.region }}"}
"""
    text = plan_errors(fleet_repo, {"clusters/c.yaml": ext, "secrets/s.yaml": literal_only})
    assert (
        "secrets/s.yaml:1: spec.data: cluster 'ext' uses external delivery, which needs at least one vault: key"
        in text
    )


def test_look_alike_clusters_share_planned_entries_and_each_gets_its_own_values(
    fleet_repo: MakeRepo,
) -> None:
    """Planning remembers an entry by what its templates read of a cluster: every entry of
    every DesiredSecret must still be what planning it alone for that cluster gives."""
    docs = []
    for i in range(24):
        env, region = ("dev", "prod")[i % 2], ("r1", "r2", "r3")[i % 3]
        delivery = "external" if i % 4 >= 2 else "sealed"
        docs.append(
            cluster(f"c{i:02d}", f"env: {env}, region: {region}", f"  delivery: {delivery}\n")
        )
    secret = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: app}
spec:
  clusterSelector: {}
  target: {name: app, namespace: web}
  data:
    password: {vault: {path: "app/{{ cluster.labels.env }}", key: password}}
    token: {vault: {path: "t/{{ cluster.labels.region }}/{{ cluster.labels.env }}", key: "{{ cluster.name }}"}}
    host: {value: "{{ cluster.name }}.{{ cluster.labels.region }}.example"}
    level: {value: base}
  overlays:
    - clusterSelector: {matchLabels: {env: prod}}
      data:
        level: {value: "prod-{{ cluster.labels.region }}"}
        password: {vault: {path: "app/prod/{{ cluster.labels.region }}", key: password}}
    - clusters: [c05, c06]
      data:
        level: {value: cluster}
"""
    fleet = load.load_fleet(
        fleet_repo(
            {"secretsync.yaml": FLEET, "clusters/c.yaml": "".join(docs), "secrets/app.yaml": secret}
        )
    )
    desired = plan.plan(fleet)
    assert len(desired) == 24
    for d in desired:
        layered = plan.layered_data(fleet.secrets[d.fleet_secret], d.cluster)
        for key, entry in layered.items():
            alone, problems = plan._planned(entry, key=key, cluster=d.cluster, fleet=fleet)
            assert problems == []
            assert d.data[key] == alone, (d.cluster.name, key)
    levels = {d.cluster.name: d.data["level"] for d in desired}
    assert levels["c05"] == Literal("cluster") and levels["c01"] == Literal("prod-r2")
    # a clean entry on a sealed cluster is no excuse on an external one that looks the same
    other_mount = secret.replace(
        "key: password}}\n    token", "key: password, mount: other}}\n    token", 1
    )
    assert other_mount != secret
    problems = plan_errors(
        fleet_repo, {"clusters/c.yaml": "".join(docs), "secrets/app.yaml": other_mount}
    )
    assert "cluster 'c02' uses external delivery" in problems

"""A small fleet in the README's fleet repo format, for engine-level tests (keys from tests/support/keys.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tests.support import canary, keys

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
spec:
  defaults: {delivery: sealed}
  output: {dir: rendered}
  sources: {vault: {kvMount: secret}}
"""

CLUSTERS = """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata:
  name: prod-use1
  labels: {env: prod, region: us-east-1, tier: restricted}
spec:
  sealedSecrets: {certFile: certs/prod-use1.pem}
  allowedNamespaces: [payments, web]
---
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata:
  name: prod-euw1
  labels: {env: prod, region: eu-west-1, tier: restricted}
spec:
  sealedSecrets: {certFile: certs/prod-euw1.pem}
---
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata:
  name: staging-use1
  labels: {env: staging, region: us-east-1, tier: general}
spec:
  sealedSecrets: {certFile: certs/staging-use1.pem}
---
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata:
  name: staging-euw1
  labels: {env: staging, region: eu-west-1, tier: restricted}
spec:
  delivery: external
  externalSecrets: {storeRef: {kind: ClusterSecretStore, name: vault}}
---
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata:
  name: dev-use1
  labels: {env: dev, region: us-east-1, tier: general}
spec:
  delivery: direct
  kubeconfig: {inCluster: true}
"""

DB_SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: payments-db}
spec:
  clusterSelector:
    matchLabels: {tier: restricted}
    matchExpressions: [{key: env, operator: In, values: [prod, staging]}]
  target: {name: db-credentials, namespace: payments, type: Opaque}
  data:
    username: {vault: {path: "payments/{{ cluster.labels.env }}/db", key: username}}
    password: {vault: {path: "payments/{{ cluster.labels.env }}/db", key: password}}
    region: {value: "{{ cluster.labels.region }}"}
  overlays:
    - clusterSelector: {matchLabels: {env: prod}}
      data: {pool-size: {value: "50"}}
    - clusters: [prod-euw1]
      data: {password: {vault: {path: payments/eu/db, key: password}}}
"""

API_SECRET = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: web-api}
spec:
  clusterSelector: {}
  target: {name: api-keys, namespace: web, scope: namespace-wide}
  data:
    token: {vault: {path: "web/{{ cluster.labels.env }}", key: token}}
"""

CLUSTER_NAMES = ("prod-use1", "prod-euw1", "staging-use1", "staging-euw1", "dev-use1")
SEALED = ("prod-use1", "prod-euw1", "staging-use1")


def write_fleet(make: Callable[[dict[str, str | bytes]], Path], **extra: str | bytes) -> Path:
    files: dict[str, str | bytes] = {
        "secretsync.yaml": FLEET,
        "clusters/all.yaml": CLUSTERS,
        "secrets/db.yaml": DB_SECRET,
        "secrets/api.yaml": API_SECRET,
    }
    for i, name in enumerate(SEALED):
        files[f"certs/{name}.pem"] = keys.cert_pem(keys.rsa_key(i))
    files.update({k.replace("__", "/"): v for k, v in extra.items()})
    return make(files)


def private_key_for(cluster: str) -> object:
    return keys.rsa_key(SEALED.index(cluster))


def vault_docs() -> dict[str, dict[str, object]]:
    """Fresh canary values for every Vault path the fleet above uses."""
    return {
        "payments/prod/db": {
            "username": canary.new("user-prod"),
            "password": canary.new("pw-prod"),
        },
        "payments/staging/db": {
            "username": canary.new("user-stg"),
            "password": canary.new("pw-stg"),
        },
        "payments/eu/db": {"password": canary.new("pw-eu")},
        "web/prod": {"token": canary.new("tok-prod")},
        "web/staging": {"token": canary.new("tok-stg")},
        "web/dev": {"token": canary.new("tok-dev")},
    }


# --- a fleet of sealed clusters and one literal value, for the Git tests -----------------------


def git_fleet_yaml(name: str) -> str:
    """The Fleet of `git_fleet`: output into `rendered/`, defaults for everything else."""
    return (
        f"apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {{name: {name}}}\n"
        "spec: {output: {dir: rendered}}\n"
    )


def mode_secret(mode: str, *, name: str = "app") -> str:
    """FleetSecret `name` for every cluster, Secret apps/`name` with one literal key `mode`:
    a value a test changes to make a new commit, without any source."""
    return (
        f"apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {{name: {name}}}\n"
        f"spec:\n  clusterSelector: {{}}\n  target: {{name: {name}, namespace: apps}}\n"
        f'  data: {{mode: {{value: "{mode}"}}}}\n'
    )


def git_fleet(
    name: str, clusters: Sequence[str], *, mode: str = "blue", object_name: str = "app"
) -> dict[str, str | bytes]:
    """The files of a fleet repo: Fleet `name`, sealed `clusters` labelled env=prod (the
    certificate of the i-th made from `keys.rsa_key(i)`) and `mode_secret(mode)`."""
    documents = [
        f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {c}, labels: {{env: prod}}}}\n"
        f"spec: {{delivery: sealed, sealedSecrets: {{certFile: certs/{c}.pem}}}}\n"
        for c in clusters
    ]
    files: dict[str, str | bytes] = {
        "secretsync.yaml": git_fleet_yaml(name),
        "clusters/all.yaml": "---\n".join(documents),
        "secrets/app.yaml": mode_secret(mode, name=object_name),
    }
    for i, cluster in enumerate(clusters):
        files[f"certs/{cluster}.pem"] = keys.cert_pem(keys.rsa_key(i))
    return files

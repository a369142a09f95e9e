"""Per-cluster Kubernetes-auth identities: one role per tenant, the login reviewed by a real
kube-apiserver (1.20), each role's policy allowing only its tenant's paths.

The Fleet says `auth: {method: kubernetes, role: "secretsync-{{ cluster.labels.tenant }}"}`;
clusters of two tenants read through load → plan → resolve with the sources the registry
builds. Counted on the wire: one login per role, one read per unique (identity, location); a
ref of one tenant's cluster that names the other tenant's path is access denied for that ref
only, and is never read with the other tenant's token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from secretsync.core import errors, model
from secretsync.fleet import load, plan
from secretsync.sources import kinds, resolve
from tests.adapters.conftest_kube import NamespaceFactory
from tests.support import canary, keys
from tests.support.kubecluster import KubeCluster
from tests.support.openbao import CountingProxy, OpenBao, kubernetes_auth

MakeRepo = Callable[[dict[str, str | bytes]], Path]
TENANTS = ("acme", "globex")


@pytest.fixture
def tenant_roles(
    kube_cluster: KubeCluster, kube_namespace: NamespaceFactory, openbao: OpenBao, unique: str
) -> Iterator[tuple[str, str, str]]:
    """(auth mount, kv mount, the `secretsync` service account's JWT): a kubernetes auth
    mount with roles `secretsync-<tenant>`, both bound to that account, each with a policy
    reading only `<kv>/data/<tenant>/*`."""
    with kubernetes_auth(
        openbao,
        kube_cluster,
        namespace=kube_namespace(kube_cluster, prefix="vi"),
        unique=unique,
        accounts=("secretsync",),
    ) as made:
        client = openbao.client()
        for tenant in TENANTS:
            policy = f"{unique}-{tenant}"
            client.sys.create_or_update_policy(
                name=policy,
                policy=f'path "{made.kv_mount}/data/{tenant}/*" {{ capabilities = ["read"] }}',
            )
            client.adapter.post(
                f"/v1/auth/{made.auth_mount}/role/secretsync-{tenant}",
                json={
                    "bound_service_account_names": ["secretsync"],
                    "bound_service_account_namespaces": [made.namespace],
                    "token_policies": [policy],
                },
            )
        yield made.auth_mount, made.kv_mount, made.jwts["secretsync"]


def fleet_files(address: str, auth_mount: str, kv_mount: str, jwt: Path) -> dict[str, str | bytes]:
    clusters = {"a1": "acme", "a2": "acme", "g1": "globex"}
    files: dict[str, str | bytes] = {
        "secretsync.yaml": f"""\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {{name: kube-identities}}
spec:
  sources:
    vault:
      address: "{address}"
      kvMount: {kv_mount}
      kvVersion: 2
      auth:
        method: kubernetes
        mountPath: {auth_mount}
        role: "secretsync-{{{{ cluster.labels.tenant }}}}"
        jwtFile: "{jwt}"
""",
        "secrets/app.yaml": """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: app}
spec:
  clusterSelector: {}
  target: {name: app, namespace: payments}
  data:
    password: {vault: {path: "{{ cluster.labels.tenant }}/app", key: password}}
    shared: {vault: {path: "globex/app", key: password}}
""",
    }
    docs = []
    for i, (name, tenant) in enumerate(clusters.items()):
        files[f"certs/{name}.pem"] = keys.cert_pem(keys.rsa_key(i))
        docs.append(
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {name}, labels: {{tenant: {tenant}}}}}\n"
            f"spec: {{sealedSecrets: {{certFile: certs/{name}.pem}}}}\n"
        )
    files["clusters/all.yaml"] = "---\n".join(docs)
    return files


async def test_each_tenant_logs_in_with_its_role_and_reads_only_its_paths(
    tenant_roles: tuple[str, str, str],
    openbao: OpenBao,
    proxy: CountingProxy,
    fleet_repo: MakeRepo,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth_mount, kv_mount, app_jwt = tenant_roles
    values = {tenant: canary.new(f"kube-{tenant}") for tenant in TENANTS}
    for tenant, value in values.items():
        openbao.write_kv(kv_mount, f"{tenant}/app", {"password": value})
    jwt = tmp_path / "sa-token"
    jwt.write_text(app_jwt)
    canary.remember(app_jwt)
    fleet = load.load_fleet(fleet_repo(fleet_files(proxy.address, auth_mount, kv_mount, jwt)))
    desired = plan.plan(fleet)
    sources = kinds.build_sources(fleet, kinds.BuildOptions(env={}))
    try:
        result = await resolve.resolve([r for d in desired for r in d.refs()], sources)
    finally:
        for source in sources.values():
            await source.aclose()

    by_cluster = {d.cluster.name: d for d in desired}
    for name, tenant in (("a1", "acme"), ("a2", "acme"), ("g1", "globex")):
        own = by_cluster[name].data["password"]
        assert isinstance(own, model.ValueRef)
        assert result.values[own].reveal().decode() == values[tenant]
    # `shared` names globex's path: globex's cluster reads it, acme's are refused, as acme
    shared_g1 = by_cluster["g1"].data["shared"]
    shared_a1 = by_cluster["a1"].data["shared"]
    assert isinstance(shared_g1, model.ValueRef) and isinstance(shared_a1, model.ValueRef)
    assert result.values[shared_g1].reveal().decode() == values["globex"]
    failure = result.failures[shared_a1]
    assert isinstance(failure, errors.AccessDenied)
    assert "role=secretsync-acme" in str(failure)
    assert by_cluster["a2"].data["shared"] == shared_a1  # one Location for one identity
    assert set(result.failures) == {shared_a1}

    # on the wire: one login per role, one read per unique (identity, location)
    logins = [s for s in proxy.seen if s.path == f"/v1/auth/{auth_mount}/login"]
    assert sorted(json.loads(s.body)["role"] for s in logins if s.status == 200) == [
        "secretsync-acme",  # the 403 is the policy's: the token is looked up, not replaced
        "secretsync-globex",
    ]
    lookups = [s for s in proxy.seen if s.path == "/v1/auth/token/lookup-self"]
    assert [s.status for s in lookups] == [200]
    issued = {s.token: i for i, s in enumerate(proxy.seen) if s.method == "ISSUED"}
    role_of = {
        s.token: json.loads(proxy.seen[i - 1].body)["role"]
        for s, i in ((proxy.seen[i], i) for i in issued.values())
    }
    data_reads = [s for s in proxy.seen if s.path.startswith(f"/v1/{kv_mount}/data/")]
    ok = sorted(
        (s.path.rsplit("/", 2)[1], role_of[s.token or ""]) for s in data_reads if s.status == 200
    )
    assert ok == [("acme", "secretsync-acme"), ("globex", "secretsync-globex")]
    for read in data_reads:
        tenant = read.path.rsplit("/", 2)[1]
        assert read.status == (200 if role_of[read.token or ""] == f"secretsync-{tenant}" else 403)
    assert result.reads == 3  # acme/app as acme, globex/app as globex, globex/app as acme
    for record in caplog.records:
        assert app_jwt not in record.getMessage()
        for token in role_of:
            assert token not in record.getMessage()

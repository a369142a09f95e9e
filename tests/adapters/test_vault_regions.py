"""Several Vaults and per-cluster identities through the real `secretsync render` (issue 17).

Two real OpenBao dev servers stand for two regions: `us` (the default source) keeps both
tenants in its root namespace, each tenant's AppRole allowed only its tenant's paths; `eu` (a
named source) keeps each tenant in a Vault namespace of its own, with an AppRole there. Both
hold different values at the same path. The Fleet templates the AppRole files (and on `eu`
the namespace) by the cluster's `tenant` label, so each cluster reads as its tenant.

Every request crosses a `CountingProxy`: reads are counted per unique (source, identity,
location), logins per identity, and every token is traced back to the login that issued it,
so a tenant's read is shown to be made with that tenant's token and no other.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
import yaml

from secretsync.delivery import seal
from tests.support import canary, cli, keys
from tests.support.openbao import CountingProxy, OpenBao, Seen, start_openbao

MakeRepo = Callable[[dict[str, str | bytes]], Path]
TENANTS = ("acme", "globex")
# cluster -> (region label, tenant, the named source it reads from; None = the default)
CLUSTERS: dict[str, tuple[str, str, str | None]] = {
    "us-acme-1": ("us", "acme", None),
    "us-acme-2": ("us", "acme", None),
    "us-globex": ("us", "globex", None),
    "eu-acme": ("eu", "acme", "eu"),
    "eu-globex": ("eu", "globex", "eu"),
}


@dataclass
class Region:
    server: OpenBao
    values: dict[str, str]  # tenant -> the password at `kv/<tenant>/db`
    role_ids: dict[str, str]  # role_id -> tenant (to trace a login to its tenant)


@pytest.fixture
def servers() -> Iterator[tuple[OpenBao, OpenBao]]:
    us = start_openbao()
    try:
        eu = start_openbao()
        try:
            yield us, eu
        finally:
            eu.stop()
    finally:
        us.stop()


def _approle(client: hvac.Client, tenant: str, policy: str, creds: Path) -> str:
    """An AppRole `<tenant>` at `ar/` with `policy`; its role-id and secret-id files under
    `creds/<tenant>/`. Returns the role_id."""
    client.auth.approle.create_or_update_approle(tenant, token_policies=[policy], mount_point="ar")
    role_id = client.auth.approle.read_role_id(tenant, mount_point="ar")["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(tenant, mount_point="ar")["data"][
        "secret_id"
    ]
    canary.remember(secret_id)  # credentials join the leak scan
    folder = creds / tenant
    folder.mkdir(parents=True)
    (folder / "role-id").write_text(role_id)
    (folder / "secret-id").write_text(secret_id + "\n")
    return str(role_id)


def setup_us(server: OpenBao, creds: Path) -> Region:
    """One namespace, a policy per tenant that reads only `kv/data/<tenant>/*`."""
    client = server.client()
    server.enable_kv("kv", version=2)
    client.sys.enable_auth_method("approle", path="ar")
    values, role_ids = {}, {}
    for tenant in TENANTS:
        values[tenant] = canary.new(f"us-{tenant}")
        server.write_kv("kv", f"{tenant}/db", {"password": values[tenant]})
        client.sys.create_or_update_policy(
            f"tenant-{tenant}", f'path "kv/data/{tenant}/*" {{ capabilities = ["read"] }}'
        )
        role_ids[_approle(client, tenant, f"tenant-{tenant}", creds)] = tenant
    return Region(server, values, role_ids)


def setup_eu(server: OpenBao, creds: Path) -> Region:
    """A Vault namespace per tenant, each with its own KV mount, policy and AppRole."""
    root = server.client()
    values, role_ids = {}, {}
    for tenant in TENANTS:
        root.adapter.post(f"/v1/sys/namespaces/{tenant}")
        client = hvac.Client(url=server.address, token=server.root_token, namespace=tenant)
        client.sys.enable_secrets_engine("kv", path="kv", options={"version": "2"})
        values[tenant] = canary.new(f"eu-{tenant}")
        client.secrets.kv.v2.create_or_update_secret(
            path=f"{tenant}/db", secret={"password": values[tenant]}, mount_point="kv"
        )
        client.sys.create_or_update_policy("tenant", 'path "kv/data/*" { capabilities = ["read"] }')
        client.sys.enable_auth_method("approle", path="ar")
        role_ids[_approle(client, tenant, "tenant", creds)] = tenant
    return Region(server, values, role_ids)


def fleet_files(us: str, eu: str, creds: Path) -> dict[str, str | bytes]:
    tenant = "{{ cluster.labels.tenant }}"
    files: dict[str, str | bytes] = {
        "secretsync.yaml": f"""\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {{name: regions}}
spec:
  sources:
    vault:
      address: "{us}"
      kvMount: kv
      kvVersion: 2
      auth:
        method: approle
        mountPath: ar
        roleIdFile: "{creds}/us/{tenant}/role-id"
        secretIdFile: "{creds}/us/{tenant}/secret-id"
    vaults:
      eu:
        address: "{eu}"
        namespace: "{tenant}"
        kvMount: kv
        kvVersion: 2
        auth:
          method: approle
          mountPath: ar
          roleIdFile: "{creds}/eu/{tenant}/role-id"
          secretIdFile: "{creds}/eu/{tenant}/secret-id"
""",
        # us-acme-2 is moved to the eu Vault for this secret by an overlay
        "secrets/db.yaml": f"""\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {{name: db}}
spec:
  clusterSelector: {{}}
  target: {{name: db, namespace: payments}}
  data:
    password: {{vault: {{path: "{tenant}/db", key: password}}}}
  overlays:
    - clusters: [us-acme-2]
      data:
        password: {{vault: {{source: eu, path: "{tenant}/db", key: password}}}}
""",
    }
    docs = []
    for i, (name, (region, tenant_name, source)) in enumerate(CLUSTERS.items()):
        files[f"certs/{name}.pem"] = keys.cert_pem(keys.rsa_key(i))
        vault = f"\n  vault: {{source: {source}}}" if source else ""
        docs.append(
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {name}, labels: {{region: {region}, tenant: {tenant_name}}}}}\n"
            f"spec:\n  sealedSecrets: {{certFile: certs/{name}.pem}}{vault}\n"
        )
    files["clusters/all.yaml"] = "---\n".join(docs)
    return files


SNEAKY = """\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {name: sneaky}
spec:
  clusterSelector: {matchLabels: {region: us}}
  target: {name: sneaky, namespace: payments}
  data:
    password: {vault: {path: "globex/db", key: password}}
"""


def render(root: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SECRETSYNC_HMAC_KEY": "regions", "SECRETSYNC_LOG_LEVEL": "debug"}
    for name in ("VAULT_TOKEN", "VAULT_ADDR", "BAO_TOKEN", "BAO_ADDR"):
        env.pop(name, None)
    return cli.run("-o", "json", "render", str(root), env=env, timeout=300)


def opened(root: Path, cluster: str, name: str) -> dict[str, bytes]:
    manifest = yaml.safe_load((root / f"rendered/{cluster}/payments/{name}.yaml").read_text())
    return seal.unseal_manifest(manifest, [keys.rsa_key(list(CLUSTERS).index(cluster))])


def tenant_of_token(seen: list[Seen], role_ids: dict[str, str]) -> dict[str, str]:
    """Token -> the tenant whose AppRole login issued it (the proxy records a login's body,
    then the token it issued, one after the other)."""
    out: dict[str, str] = {}
    for login, issued in itertools.pairwise(seen):
        if login.path.endswith("/login") and issued.method == "ISSUED" and issued.token:
            out[issued.token] = role_ids[json.loads(login.body)["role_id"]]
    return out


def reads(seen: list[Seen]) -> list[Seen]:
    return [s for s in seen if s.method == "GET" and s.path.startswith("/v1/kv/data/")]


async def test_two_regions_and_tenant_identities_read_once_each_with_their_own_token(
    fleet_repo: MakeRepo, servers: tuple[OpenBao, OpenBao], tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    us = setup_us(servers[0], creds / "us")
    eu = setup_eu(servers[1], creds / "eu")
    async with (
        CountingProxy(us.server.address) as us_wire,
        CountingProxy(eu.server.address) as eu_wire,
    ):
        root = fleet_repo(fleet_files(us_wire.address, eu_wire.address, creds))
        done = await asyncio.to_thread(render, root)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        summary = json.loads(done.stdout)["summary"]

        # values: each cluster gets its region's (or its overlay's) value for its tenant
        assert opened(root, "us-acme-1", "db") == {"password": us.values["acme"].encode()}
        assert opened(root, "us-acme-2", "db") == {"password": eu.values["acme"].encode()}
        assert opened(root, "us-globex", "db") == {"password": us.values["globex"].encode()}
        assert opened(root, "eu-acme", "db") == {"password": eu.values["acme"].encode()}
        assert opened(root, "eu-globex", "db") == {"password": eu.values["globex"].encode()}

        # reads = unique (source, identity, location): us acme, us globex, eu acme (eu-acme and
        # us-acme-2 share it), eu globex; logins = identities in use, per server
        assert summary["sourceReads"] == 4
        assert sorted(s.path for s in reads(us_wire.seen)) == [
            "/v1/kv/data/acme/db",
            "/v1/kv/data/globex/db",
        ]
        assert sorted(s.path for s in reads(eu_wire.seen)) == [
            "/v1/kv/data/acme/db",
            "/v1/kv/data/globex/db",
        ]
        assert us_wire.count("POST", "/v1/auth/ar/login", status=200) == 2
        assert eu_wire.count("POST", "/v1/auth/ar/login", status=200) == 2
        for wire, region in ((us_wire, us), (eu_wire, eu)):
            owner = tenant_of_token(wire.seen, region.role_ids)
            assert sorted(owner.values()) == ["acme", "globex"]
            for read in reads(wire.seen):
                assert read.status == 200
                assert owner[read.token or ""] == read.path.split("/")[4]  # /v1/kv/data/<t>/db

        # an acme cluster pointed at globex's path: access denied for the acme clusters only
        before = {name: opened(root, name, "db") for name in CLUSTERS}
        (root / "secrets/sneaky.yaml").write_text(SNEAKY)
        us_wire.seen.clear()
        done = await asyncio.to_thread(render, root)
        assert done.returncode == 1
        report = json.loads(done.stdout)["clusters"]
        actions = {
            name: {item["fleetSecret"]: item["action"] for item in items}
            for name, items in report.items()
        }
        assert actions["us-acme-1"]["sneaky"] == "failed"
        assert actions["us-acme-2"]["sneaky"] == "failed"
        assert actions["us-globex"]["sneaky"] == "create"
        err = done.stderr.decode()
        assert "AccessDenied" in err or "access denied" in err.lower(), err[-2000:]
        assert "roleIdFile" in err  # the failure names the identity that was refused
        assert opened(root, "us-globex", "sneaky") == {"password": us.values["globex"].encode()}
        for name in ("us-acme-1", "us-acme-2"):
            assert not (root / f"rendered/{name}/payments/sneaky.yaml").exists()
        assert {name: opened(root, name, "db") for name in CLUSTERS} == before
        # never another identity's token: globex's path answered 200 only to globex's token
        owner = tenant_of_token(us_wire.seen, us.role_ids)
        for read in reads(us_wire.seen):
            tenant = owner[read.token or ""]
            assert read.status == (200 if read.path.split("/")[4] == tenant else 403), read
        denied = [s for s in reads(us_wire.seen) if s.status == 403]
        assert denied and {owner[s.token or ""] for s in denied} == {"acme"}
        for text in (done.stdout.decode(), err):
            assert canary.find_in_text(text) == []
            for token in owner:
                assert token not in text


def test_page_and_status_name_each_clusters_source_and_identity_never_a_token(
    fleet_repo: MakeRepo, tmp_path: Path
) -> None:
    """The board lists, per cluster, the sources its objects read and as which identity."""
    from datetime import UTC, datetime

    from secretsync.daemon import status
    from secretsync.fleet import load, plan

    creds = tmp_path / "creds"
    root = fleet_repo(fleet_files("http://127.0.0.1:1", "http://127.0.0.1:2", creds))
    fleet = load.load_fleet(root)
    board = status.StatusBoard()
    board.fleet_loaded(fleet, plan.plan(fleet), at=datetime.now(UTC))
    doc = {c["name"]: c["sources"] for c in board.document()["clusters"]}
    us_acme = f"vault as roleIdFile={creds}/us/acme/role-id secretIdFile={creds}/us/acme/secret-id"
    eu_acme = (
        f"vault:eu as namespace=acme roleIdFile={creds}/eu/acme/role-id "
        f"secretIdFile={creds}/eu/acme/secret-id"
    )
    assert doc["us-acme-1"] == [us_acme]
    assert doc["us-acme-2"] == [eu_acme]  # its overlay moved it to eu
    assert doc["eu-acme"] == [eu_acme]
    assert "token" not in json.dumps(doc).lower()

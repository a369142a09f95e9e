"""`secretsync render` with values from a real OpenBao: four clusters sharing per-environment
paths, a pinned version, a KV v1 mount, AppRole — and last-known-good when the latest version
is soft-deleted or OpenBao is stopped (issue 3's acceptance, through the real command)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from secretsync.delivery import seal
from tests.support import canary, cli, cycles, keys
from tests.support.openbao import CountingProxy, OpenBao

MakeRepo = Callable[[dict[str, str | bytes]], Path]
CLUSTERS = {"prod-use1": "prod", "prod-euw1": "prod", "staging-use1": "staging", "dev-use1": "dev"}


def fleet_files(
    address: str, unique: str, role_id: str, secret_file: Path
) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {
        "secretsync.yaml": f"""\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {{name: vault-render}}
spec:
  sources:
    vault:
      address: "{address}"
      kvMount: secret
      auth: {{method: approle, roleId: "{role_id}", secretIdFile: "{secret_file}", mountPath: {unique}}}
""",
        "secrets/db.yaml": f"""\
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {{name: db}}
spec:
  clusterSelector: {{}}
  target: {{name: db, namespace: payments}}
  data:
    username: {{vault: {{path: "{unique}/{{{{ cluster.labels.env }}}}/db", key: username}}}}
    password: {{vault: {{path: "{unique}/{{{{ cluster.labels.env }}}}/db", key: password}}}}
    legacy: {{vault: {{path: "{unique}/pinned", key: token, version: 1}}}}
    license: {{vault: {{path: app/license, key: key, mount: {unique}-v1}}}}
""",
    }
    docs = []
    for i, (name, env) in enumerate(CLUSTERS.items()):
        files[f"certs/{name}.pem"] = keys.cert_pem(keys.rsa_key(i))
        docs.append(
            f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {name}, labels: {{env: {env}}}}}\n"
            f"spec: {{sealedSecrets: {{certFile: certs/{name}.pem}}}}\n"
        )
    files["clusters/all.yaml"] = "---\n".join(docs)
    return files


def setup_vault(bao: OpenBao, unique: str, tmp: Path) -> tuple[str, Path, dict[str, Any]]:
    client = bao.client()
    values: dict[str, Any] = {}
    for env in ("prod", "staging", "dev"):
        values[env] = {"username": canary.new(f"u-{env}"), "password": canary.new(f"p-{env}")}
        bao.write_kv("secret", f"{unique}/{env}/db", values[env])
    values["pinned-1"] = canary.new("pinned-v1")
    bao.write_kv("secret", f"{unique}/pinned", {"token": values["pinned-1"]})
    bao.write_kv("secret", f"{unique}/pinned", {"token": canary.new("pinned-v2")})
    bao.enable_kv(f"{unique}-v1", version=1)
    values["license"] = canary.new("license")
    bao.write_kv(f"{unique}-v1", "app/license", {"key": values["license"]}, version=1)
    client.sys.create_or_update_policy(
        unique,
        f'path "secret/data/{unique}/*" {{ capabilities = ["read"] }}\n'
        f'path "{unique}-v1/*" {{ capabilities = ["read"] }}\n'
        'path "sys/internal/ui/mounts/*" { capabilities = ["read"] }\n',
    )
    client.sys.enable_auth_method("approle", path=unique)
    client.auth.approle.create_or_update_approle(
        unique, token_policies=[unique], mount_point=unique
    )
    role_id = client.auth.approle.read_role_id(unique, mount_point=unique)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(unique, mount_point=unique)["data"][
        "secret_id"
    ]
    secret_file = tmp / "secret-id"
    secret_file.write_text(secret_id)
    return role_id, secret_file, values


def secretsync(*args: str, token: bool = False, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`secretsync -o json ARGS` as a process; without `token` VAULT_TOKEN is left out, so only
    the fleet's own Vault login (AppRole) can read."""
    full = cli.environ(SECRETSYNC_HMAC_KEY="vault-render", **env)
    if not token:
        full.pop("VAULT_TOKEN", None)
    return cli.run("-o", "json", *args, env=full, timeout=300)


def render(root: Path) -> subprocess.CompletedProcess[bytes]:
    return secretsync("render", str(root), SECRETSYNC_LOG_LEVEL="debug")


def snapshot(root: Path) -> dict[str, bytes]:
    return cycles.snapshot(root / "rendered")


async def test_render_from_openbao_reads_once_and_keeps_last_known_good(
    fleet_repo: MakeRepo, openbao: OpenBao, unique: str, tmp_path: Path
) -> None:
    role_id, secret_file, values = setup_vault(openbao, unique, tmp_path)
    async with CountingProxy(openbao.address) as proxy:
        root = fleet_repo(fleet_files(proxy.address, unique, role_id, secret_file))
        done = await asyncio.to_thread(render, root)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        summary = json.loads(done.stdout)["summary"]
        assert summary["sourceReads"] == 5  # 3 environments + pinned + KV v1, for 4 clusters
        assert proxy.count("GET", "/v1/secret/data/") == 4
        assert proxy.count("GET", f"/v1/{unique}-v1/") == 1
        assert proxy.count("POST", f"/v1/auth/{unique}/login") == 1
        for i, (name, env) in enumerate(CLUSTERS.items()):
            manifest = yaml.safe_load((root / f"rendered/{name}/payments/db.yaml").read_text())
            opened = seal.unseal_manifest(manifest, [keys.rsa_key(i)])
            assert opened == {
                "username": values[env]["username"].encode(),
                "password": values[env]["password"].encode(),
                "legacy": values["pinned-1"].encode(),
                "license": values["license"].encode(),
            }
        before = snapshot(root)

        # the latest version of prod's path is soft-deleted: prod clusters fail, others proceed
        openbao.client().secrets.kv.v2.delete_latest_version_of_secret(
            f"{unique}/prod/db", mount_point="secret"
        )
        done = await asyncio.to_thread(render, root)
        assert done.returncode == 1
        err = done.stderr.decode()
        assert f"vault:secret/{unique}/prod/db" in err
        assert "deleted" in err
        assert snapshot(root) == before
        failed = {
            name
            for name, items in json.loads(done.stdout)["clusters"].items()
            for item in items
            if item["action"] == "failed"
        }
        assert failed == {"prod-use1", "prod-euw1"}
        for text in (done.stdout.decode(), err):
            assert canary.find_in_text(text) == []

    # OpenBao unreachable (the proxy is gone): every cluster fails, nothing changes
    done = await asyncio.to_thread(render, root)
    assert done.returncode == 1
    assert snapshot(root) == before
    assert canary.find_in_text(done.stdout.decode() + done.stderr.decode()) == []


def with_external_cluster(files: dict[str, str | bytes], unique: str) -> dict[str, str | bytes]:
    """`files` plus an `external` cluster `ext` (env: prod), the db secret for prod clusters
    only and without its KV v1 key (an external store reads only the kvMount)."""
    files["clusters/all.yaml"] = str(files["clusters/all.yaml"]) + (
        "---\napiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        "metadata: {name: ext, labels: {env: prod}}\nspec: {delivery: external}\n"
    )
    files["secrets/db.yaml"] = (
        str(files["secrets/db.yaml"])
        .replace("  clusterSelector: {}", "  clusterSelector: {matchLabels: {env: prod}}")
        .replace(
            f"    license: {{vault: {{path: app/license, key: key, mount: {unique}-v1}}}}\n", ""
        )
    )
    return files


async def test_check_refs_reads_external_refs_and_plan_names_source_versions(
    fleet_repo: MakeRepo, openbao: OpenBao, unique: str, tmp_path: Path
) -> None:
    role_id, secret_file, values = setup_vault(openbao, unique, tmp_path)
    async with CountingProxy(openbao.address) as proxy:
        files = with_external_cluster(
            fleet_files(proxy.address, unique, role_id, secret_file), unique
        )
        root = fleet_repo(files)

        def plan(*extra: str) -> subprocess.CompletedProcess[bytes]:
            return secretsync("plan", str(root), *extra, token=True)

        done = await asyncio.to_thread(plan, "--cluster", "ext")
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert proxy.count("GET", "/v1/secret/data/") == 0, "external needs no read"
        openbao.client().secrets.kv.v2.create_or_update_secret(
            path=f"{unique}/prod/db", secret={"username": canary.new("u2")}, mount_point="secret"
        )
        checked = await asyncio.to_thread(plan, "--cluster", "ext", "--check-refs")
        assert checked.returncode == 1
        assert f"vault:secret/{unique}/prod/db" in checked.stderr.decode()
        assert "'password' not found" in checked.stderr.decode()
        full = await asyncio.to_thread(plan, "--cluster", "prod-use1")
        item = json.loads(full.stdout)["clusters"]["prod-use1"]
        assert item[0]["action"] == "failed"
        openbao.write_kv("secret", f"{unique}/prod/db", values["prod"])
        full = await asyncio.to_thread(plan, "--cluster", "prod-use1")
        (item,) = json.loads(full.stdout)["clusters"]["prod-use1"]
        assert item["action"] == "create"
        assert f"vault:secret/{unique}/prod/db (version 3)" in item["sources"]
        assert canary.find_in_text(full.stdout.decode() + full.stderr.decode()) == []


async def test_plan_names_refs_that_moved_to_a_new_version(
    fleet_repo: MakeRepo, openbao: OpenBao, unique: str, tmp_path: Path
) -> None:
    role_id, secret_file, values = setup_vault(openbao, unique, tmp_path)
    root = fleet_repo(fleet_files(openbao.address, unique, role_id, secret_file))
    done = await asyncio.to_thread(render, root)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    manifest = yaml.safe_load((root / "rendered/prod-use1/payments/db.yaml").read_text())
    recorded = manifest["metadata"]["annotations"]["secretsync.dev/source-versions"]
    assert recorded == f"secret/{unique}/pinned=1,secret/{unique}/prod/db=1"
    openbao.write_kv("secret", f"{unique}/prod/db", values["prod"])  # same values, version 2

    def plan() -> subprocess.CompletedProcess[bytes]:
        return secretsync("plan", str(root))

    planned = await asyncio.to_thread(plan)
    assert planned.returncode == 0, planned.stderr.decode()[-2000:]
    clusters = json.loads(planned.stdout)["clusters"]
    assert set(clusters) == {"prod-use1", "prod-euw1"}
    for items in clusters.values():
        (item,) = items
        assert item["action"] == "update"
        assert "keys" not in item, "no value changed"
        assert item["versionChanges"] == [f"secret/{unique}/prod/db: 1 -> 2"]
    before = (root / "rendered/prod-use1/payments/db.yaml").read_bytes()
    assert (await asyncio.to_thread(render, root)).returncode == 0
    after = (root / "rendered/prod-use1/payments/db.yaml").read_bytes()
    old_enc = yaml.safe_load(before)["spec"]["encryptedData"]
    new_enc = yaml.safe_load(after)["spec"]["encryptedData"]
    assert old_enc == new_enc, "same values keep their ciphertext; only the recorded version moved"


async def test_an_external_object_does_not_fail_on_a_read_made_for_another_cluster(
    fleet_repo: MakeRepo, openbao: OpenBao, unique: str, tmp_path: Path
) -> None:
    """The latest version of a path a sealed cluster and an `external` cluster both name is
    deleted: the sealed objects fail (their values cannot be read); the ExternalSecret, which
    reads nothing, is planned as when its cluster is planned alone."""
    role_id, secret_file, _ = setup_vault(openbao, unique, tmp_path)
    async with CountingProxy(openbao.address) as proxy:
        files = with_external_cluster(
            fleet_files(proxy.address, unique, role_id, secret_file), unique
        )
        root = fleet_repo(files)
        openbao.client().secrets.kv.v2.delete_latest_version_of_secret(
            f"{unique}/prod/db", mount_point="secret"
        )

        def plan(*extra: str) -> tuple[int, dict[str, str], str]:
            done = secretsync("plan", str(root), *extra)
            actions = {
                name: item["action"]
                for name, items in json.loads(done.stdout)["clusters"].items()
                for item in items
            }
            return done.returncode, actions, done.stderr.decode()

        code, alone, _ = await asyncio.to_thread(plan, "--cluster", "ext")
        assert (code, alone) == (0, {"ext": "create"})
        assert proxy.count("GET", "/v1/secret/data/") == 0, "an ExternalSecret reads nothing"

        code, actions, err = await asyncio.to_thread(plan)
        assert code == 1  # the sealed clusters' objects fail
        assert actions == {"prod-use1": "failed", "prod-euw1": "failed", "ext": "create"}
        assert "deleted" in err
        assert canary.find_in_text(err) == []

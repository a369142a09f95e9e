"""Benchmark: the Vault fleet scenario with 2 sources and 10 identities, beside one source.

    python bench/vault_regions.py [--tenants 10] [--clusters 200] [--paths 200] [--keys 2]

Starts two OpenBao dev servers on loopback (tests/openbao.py). Each of `--tenants` tenants
owns `--paths` KV v2 secrets of `--keys` keys under `fleet/<tenant>/`, and `--clusters`
clusters are spread over the tenants; every cluster uses every key of its tenant's paths.

- one source, one identity: every tenant's paths on one server, one AppRole that reads all;
- two sources, one identity per tenant: the first half of the tenants on `us` (the default
  source), the other half on `eu` (a named source the clusters name), and an AppRole per
  tenant whose policy reads only that tenant's paths, its role-id and secret-id files
  templated by the cluster's `tenant` label.

Both go through load → plan → resolve with the sources the registry builds. Reads, logins
and requests are the sources' own counters; client CPU is this process's. The results document
is printed after the table (`--json FILE` writes it there too).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import harness

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secretsync.fleet import load, plan
from secretsync.sources import kinds, resolve
from tests.support.openbao import OpenBao, start_openbao


def approle(server: OpenBao, role: str, policy: str, folder: Path) -> None:
    client = server.client()
    client.auth.approle.create_or_update_approle(role, token_policies=[policy], mount_point="ar")
    role_id = client.auth.approle.read_role_id(role, mount_point="ar")["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(role, mount_point="ar")["data"]["secret_id"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "role-id").write_text(role_id)
    (folder / "secret-id").write_text(secret_id)


def prepare(server: OpenBao) -> None:
    server.enable_kv("fleet", version=2)
    server.client().sys.enable_auth_method("approle", path="ar")


async def fill(server: OpenBao, tenants: list[str], paths: int, keys: int) -> None:
    secrets = [
        (f"{tenant}/p{i}", {f"k{k}": f"{tenant}-{i}-{k}" for k in range(keys)})
        for tenant in tenants
        for i in range(paths)
    ]
    await harness.write_kv(server.address, server.root_token, mount="fleet", secrets=secrets)


def fleet_repo(
    root: Path,
    *,
    us: str,
    eu: str | None,
    creds: Path,
    tenants: list[str],
    args: argparse.Namespace,
) -> Path:
    tenant = "{{ cluster.labels.tenant }}"
    templated = eu is not None
    folder = f"{creds}/us/{tenant}" if templated else f"{creds}/single"
    sources = f"""\
    vault:
      address: "{us}"
      kvMount: fleet
      kvVersion: 2
      limits: {{requestsPerSecond: 100000}}
      auth: {{method: approle, mountPath: ar, roleIdFile: "{folder}/role-id", secretIdFile: "{folder}/secret-id"}}
"""
    if eu is not None:
        sources += f"""\
    vaults:
      eu:
        address: "{eu}"
        kvMount: fleet
        kvVersion: 2
        limits: {{requestsPerSecond: 100000}}
        auth: {{method: approle, mountPath: ar, roleIdFile: "{creds}/eu/{tenant}/role-id", secretIdFile: "{creds}/eu/{tenant}/secret-id"}}
"""
    (root / "clusters").mkdir(parents=True)
    (root / "secrets").mkdir()
    (root / "certs").mkdir()
    (root / "secretsync.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench}\n"
        f"spec:\n  sources:\n{sources}"
    )
    pem = harness.sealing_keys(1, bits=2048)[0][1]
    (root / "certs/c.pem").write_bytes(pem)
    docs = []
    half = len(tenants) // 2
    for c in range(args.clusters):
        t = c % len(tenants)
        source = "  vault: {source: eu}\n" if eu is not None and t >= half else ""
        docs.append(
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: c{c}, labels: {{tenant: {tenants[t]}}}}}\n"
            f"spec:\n  sealedSecrets: {{certFile: certs/c.pem}}\n{source}"
        )
    (root / "clusters/all.yaml").write_text("---\n".join(docs))
    data = "".join(
        f'    p{i}k{k}: {{vault: {{path: "{tenant}/p{i}", key: k{k}}}}}\n'
        for i in range(args.paths)
        for k in range(args.keys)
    )
    (root / "secrets/app.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: app}\n"
        "spec:\n  clusterSelector: {}\n  target: {name: app, namespace: app}\n"
        f"  data:\n{data}"
    )
    return root


async def measure(root: Path) -> dict[str, object]:
    fleet = load.load_fleet(root)
    desired = plan.plan(fleet)
    refs = [r for d in desired for r in d.refs()]
    sources = kinds.build_sources(fleet, kinds.BuildOptions(env={}))
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        result = await resolve.resolve(refs, sources)
    finally:
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        counts = {
            key: dict(source.counts())
            for key, source in sources.items()
            if isinstance(source, resolve.Counted)
        }
        for source in sources.values():
            await source.aclose()
    if result.failures:
        raise SystemExit(
            f"{len(result.failures)} refs failed: {next(iter(result.failures.values()))}"
        )
    reads = sum(c.get("reads", 0) for c in counts.values())
    return {
        "uses": len(refs),
        "unique_locations": result.reads,
        "reads": reads,
        "logins": sum(c.get("logins", 0) for c in counts.values()),
        "requests": sum(c.get("requests", 0) for c in counts.values()),
        "per_source": {k: {n: c[n] for n in ("reads", "logins")} for k, c in counts.items()},
        "wall_s": round(wall, 3),
        "client_cpu_us_per_read": round(cpu / max(reads, 1) * 1e6, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--paths", type=int, default=200)
    parser.add_argument("--keys", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results document there")
    args = parser.parse_args()
    tenants = [f"t{i}" for i in range(args.tenants)]
    half = len(tenants) // 2
    us, eu = start_openbao(), start_openbao()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for server in (us, eu):
                prepare(server)
            # one source: every tenant on us, one role reading all of `fleet`
            await fill(us, tenants, args.paths, args.keys)
            us.client().sys.create_or_update_policy(
                "all", 'path "fleet/data/*" { capabilities = ["read"] }'
            )
            approle(us, "all", "all", work / "creds/single")
            # two sources: tenants split over us and eu, one role per tenant
            await fill(eu, tenants[half:], args.paths, args.keys)
            for i, tenant in enumerate(tenants):
                server, region = (us, "us") if i < half else (eu, "eu")
                server.client().sys.create_or_update_policy(
                    tenant, f'path "fleet/data/{tenant}/*" {{ capabilities = ["read"] }}'
                )
                approle(server, tenant, tenant, work / f"creds/{region}/{tenant}")
            single = fleet_repo(
                work / "single",
                us=us.address,
                eu=None,
                creds=work / "creds",
                tenants=tenants,
                args=args,
            )
            regions = fleet_repo(
                work / "regions",
                us=us.address,
                eu=eu.address,
                creds=work / "creds",
                tenants=tenants,
                args=args,
            )
            rows = {}
            for name, root in (
                ("one source, one identity", single),
                ("2 sources, 10 identities", regions),
            ):
                runs = [await measure(root) for _ in range(3)]
                runs.sort(key=lambda r: float(str(r["wall_s"])))
                rows[name] = runs[1]  # the median by wall time
    finally:
        us.stop()
        eu.stop()
    print("| run | uses | reads | logins | requests | wall | client CPU per read |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['uses']:,} | {row['reads']:,} | {row['logins']} | "
            f"{row['requests']:,} | {row['wall_s']} s | {row['client_cpu_us_per_read']} µs |"
        )
    args_doc = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    doc = {"machine": harness.machine(load=harness.load_average()), "args": args_doc, "rows": rows}
    harness.emit(doc, args.json)


if __name__ == "__main__":
    asyncio.run(main())

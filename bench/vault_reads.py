"""Benchmark: fleet-wide Vault reads through VaultSource against the naive per-key approach.

    python bench/vault_reads.py [--paths 2000] [--keys 10] [--clusters 20] [--naive-sample 2000]

Starts its own OpenBao dev server (tests/openbao.py) on loopback, writes `--paths` KV v2
secrets of `--keys` keys each, and builds a fleet in which each of `--clusters` clusters uses
every key of every path (paths x keys x clusters materializations). Then, in the same run:

- secretsync: `resolve.resolve` over all refs with one `VaultSource` (AppRole login), once with
  the default limits (500 requests/s) and once with the rate limit raised (CPU-bound);
- naive: one hvac `read_secret_version` per cluster per key, sequential, with one AppRole login.
  Sequential hvac reads of every materialization would take minutes, so the naive run reads
  the first `--naive-sample` materializations and projects the total from its per-read cost
  (`--naive-sample 0` reads them all).

Client CPU is this process's CPU time; OpenBao's CPU is read from /proc/<pid>/stat. Results are
printed as a table and as one JSON document on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import hvac

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secretsync import model, resolve
from secretsync.sources import vault
from tests.openbao import OpenBao, start_openbao

MOUNT = "fleet"
ROLE = "secretsync-bench"


@dataclass
class Row:
    name: str
    materializations: int
    reads: int
    logins: int
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float
    measured_reads: int
    measured_wall_s: float
    client_cpu_per_read_us: float
    server_cpu_per_read_us: float
    projected: bool = False

    @property
    def reads_per_s(self) -> float:
        return self.measured_reads / self.measured_wall_s if self.measured_wall_s else 0.0


def server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def populate(server: OpenBao, *, paths: int, keys: int) -> None:
    """Write the secrets with 32 requests in flight (not measured)."""
    gate = asyncio.Semaphore(32)
    headers = {"X-Vault-Token": server.root_token}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def write(p: int) -> None:
            data = {f"key{k}": f"value-{p}-{k}-{os.urandom(8).hex()}" for k in range(keys)}
            async with gate:
                url = f"{server.address}/v1/{MOUNT}/data/app/{p:05d}"
                async with session.post(url, json={"data": data}) as response:
                    response.raise_for_status()

        await asyncio.gather(*(write(p) for p in range(paths)))


def setup_approle(server: OpenBao) -> tuple[str, str]:
    client = server.client()
    client.sys.create_or_update_policy(
        name=ROLE, policy=f'path "{MOUNT}/data/*" {{ capabilities = ["read"] }}'
    )
    client.sys.enable_auth_method("approle")
    client.auth.approle.create_or_update_approle(
        role_name=ROLE, token_policies=[ROLE], token_ttl="1h"
    )
    role_id = client.auth.approle.read_role_id(role_name=ROLE)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(role_name=ROLE)["data"]["secret_id"]
    return str(role_id), str(secret_id)


def fleet_refs(*, paths: int, keys: int, clusters: int) -> list[model.ValueRef]:
    """What every cluster asks for: every key of every path (identical across clusters)."""
    return [
        model.ValueRef(
            location=model.Location(source="vault", path=f"app/{p:05d}", mount=MOUNT),
            key=f"key{k}",
        )
        for _ in range(clusters)
        for p in range(paths)
        for k in range(keys)
    ]


async def run_secretsync(
    server: OpenBao,
    *,
    name: str,
    refs: list[model.ValueRef],
    limits: model.VaultLimits,
    role_id: str,
    secret_id: str,
) -> Row:
    settings = model.VaultSettings(
        address=server.address,
        kv_mount=MOUNT,
        auth=model.VaultAuth(method="approle", role_id=role_id, secret_id_env="BENCH_SECRET_ID"),
        limits=limits,
    )
    source = vault.build_vault_source(settings, env={"BENCH_SECRET_ID": secret_id}, root=Path.cwd())
    gc.collect()
    server0, cpu0, wall0 = server_cpu_s(server.pid), time.process_time(), time.perf_counter()
    try:
        result = await resolve.resolve(refs, {"vault": source}, concurrency=limits.concurrency)
    finally:
        await source.aclose()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server_cpu = server_cpu_s(server.pid) - server0
    if result.failures:
        first = next(iter(result.failures.values()))
        raise SystemExit(f"{name}: {len(result.failures)} refs failed, e.g. {first}")
    reads = source.counters.reads
    return Row(
        name=name,
        materializations=len(refs),
        reads=reads,
        logins=source.counters.logins,
        wall_s=wall,
        client_cpu_s=cpu,
        server_cpu_s=server_cpu,
        measured_reads=reads,
        measured_wall_s=wall,
        client_cpu_per_read_us=cpu / reads * 1e6,
        server_cpu_per_read_us=server_cpu / reads * 1e6,
    )


def run_naive(
    server: OpenBao, *, refs: list[model.ValueRef], sample: int, role_id: str, secret_id: str
) -> Row:
    client = hvac.Client(url=server.address)
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    todo = refs if sample <= 0 else refs[:sample]
    kv = client.secrets.kv.v2
    gc.collect()
    server0, cpu0, wall0 = server_cpu_s(server.pid), time.process_time(), time.perf_counter()
    for ref in todo:
        answer = kv.read_secret_version(
            path=ref.location.path, mount_point=MOUNT, raise_on_deleted_version=True
        )
        if ref.key not in answer["data"]["data"]:
            raise SystemExit(f"naive: {ref} missing")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server_cpu = server_cpu_s(server.pid) - server0
    n, total = len(todo), len(refs)
    return Row(
        name="naive: hvac, one read per cluster per key, sequential",
        materializations=total,
        reads=total,
        logins=1,
        wall_s=wall / n * total,
        client_cpu_s=cpu / n * total,
        server_cpu_s=server_cpu / n * total,
        measured_reads=n,
        measured_wall_s=wall,
        projected=n < total,
        client_cpu_per_read_us=cpu / n * 1e6,
        server_cpu_per_read_us=server_cpu / n * 1e6,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=10, help="keys per path")
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--naive-sample", type=int, default=2000)
    args = parser.parse_args(argv)

    server = start_openbao()
    try:
        server.enable_kv(MOUNT, version=2)
        asyncio.run(populate(server, paths=args.paths, keys=args.keys))
        role_id, secret_id = setup_approle(server)
        refs = fleet_refs(paths=args.paths, keys=args.keys, clusters=args.clusters)
        runs = [
            ("default limits (500 req/s)", model.VaultLimits(concurrency=args.concurrency)),
            (
                "rate limit raised",
                model.VaultLimits(concurrency=args.concurrency, requests_per_second=1e6),
            ),
        ]
        rows = [
            asyncio.run(
                run_secretsync(
                    server,
                    name=f"secretsync: VaultSource, {label}",
                    refs=refs,
                    limits=limits,
                    role_id=role_id,
                    secret_id=secret_id,
                )
            )
            for label, limits in runs
        ]
        rows.append(
            run_naive(
                server,
                refs=refs,
                sample=args.naive_sample,
                role_id=role_id,
                secret_id=secret_id,
            )
        )
    finally:
        server.stop()

    naive = rows[-1]
    print(
        f"fleet: {args.paths} paths x {args.keys} keys x {args.clusters} clusters = "
        f"{len(refs)} materializations; OpenBao {server.address} (dev, in-memory, same host)"
    )
    header = (
        f"{'run':<55} {'reads':>8} {'logins':>6} {'wall s':>8} {'reads/s':>8} "
        f"{'client us/read':>14} {'server us/read':>14} {'speedup':>8}"
    )
    print(header)
    report = []
    for row in rows:
        speedup = naive.wall_s / row.wall_s
        mark = "*" if row.projected else " "
        print(
            f"{row.name:<55} {row.reads:>8} {row.logins:>6} {row.wall_s:>7.2f}{mark} "
            f"{row.reads_per_s:>8.0f} {row.client_cpu_per_read_us:>14.0f} "
            f"{row.server_cpu_per_read_us:>14.0f} {speedup:>7.1f}x"
        )
        report.append({**asdict(row), "reads_per_s": row.reads_per_s, "speedup": speedup})
    if naive.projected:
        print(
            f"* projected from {naive.measured_reads} measured reads "
            f"({naive.measured_wall_s:.2f} s); speedup = naive wall time / run wall time"
        )
    print(
        json.dumps(
            {
                "benchmark": "vault_reads",
                "params": vars(args),
                "materializations": len(refs),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "loadavg": os.getloadavg(),
                },
                "results": report,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

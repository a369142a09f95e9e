"""Benchmark: fleet-wide Vault reads through VaultSource against the naive per-key approach.

    python bench/vault_reads.py [--paths 2000] [--keys 10] [--clusters 20] [--naive-sample 2000]

Starts its own OpenBao dev server (tests/support/openbao.py) on loopback, writes `--paths` KV v2
secrets of `--keys` keys each, and builds a fleet in which each of `--clusters` clusters uses
every key of every path (paths x keys x clusters materializations). Then, in the same run:

- floor: bare aiohttp GETs of each path once, 32 in flight: what the transport costs on this
  machine right now (CPU figures on a shared machine drift with its load);
- secretsync, source alone: `resolve.resolve` with one ref per path, rate limit raised: the
  VaultSource's own cost per read, to compare with the floor;
- secretsync, fleet: `resolve.resolve` over every ref with one `VaultSource` (AppRole login),
  once with the default limits (500 requests/s) and once with the rate limit raised; its
  client CPU per read includes resolve's lookup of every materialization;
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
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import aiohttp
import harness
import hvac

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secretsync.core import model
from secretsync.sources import resolve, vault
from tests.support.openbao import OpenBao, start_openbao

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
    repeats: int = 1
    client_cpu_per_read_us_runs: list[float] = field(default_factory=list)
    wall_s_runs: list[float] = field(default_factory=list)

    @property
    def reads_per_s(self) -> float:
        return self.measured_reads / self.measured_wall_s if self.measured_wall_s else 0.0


def median_of(make: Callable[[], Row], repeats: int) -> Row:
    """Run `make` `repeats` times; medians of wall time and CPU, with every run kept."""
    rows = [make() for _ in range(max(1, repeats))]
    walls = [r.wall_s for r in rows]
    clients = [r.client_cpu_per_read_us for r in rows]
    return replace(
        rows[0],
        wall_s=statistics.median(walls),
        measured_wall_s=statistics.median(r.measured_wall_s for r in rows),
        client_cpu_s=statistics.median(r.client_cpu_s for r in rows),
        server_cpu_s=statistics.median(r.server_cpu_s for r in rows),
        client_cpu_per_read_us=statistics.median(clients),
        server_cpu_per_read_us=statistics.median(r.server_cpu_per_read_us for r in rows),
        repeats=len(rows),
        client_cpu_per_read_us_runs=[round(c, 1) for c in clients],
        wall_s_runs=[round(w, 3) for w in walls],
    )


server_cpu_s = harness.proc_cpu_s


async def populate(server: OpenBao, *, paths: int, keys: int) -> None:
    """Write the secrets with 32 requests in flight (not measured)."""
    await harness.write_kv(
        server.address,
        server.root_token,
        mount=MOUNT,
        secrets=(
            (
                f"app/{p:05d}",
                {f"key{k}": f"value-{p}-{k}-{os.urandom(8).hex()}" for k in range(keys)},
            )
            for p in range(paths)
        ),
    )


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


async def run_floor(
    server: OpenBao, *, paths: int, concurrency: int, role_id: str, secret_id: str
) -> Row:
    """The transport's floor on this machine now: bare aiohttp GETs of every path once."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        login = {"role_id": role_id, "secret_id": secret_id}
        async with session.post(f"{server.address}/v1/auth/approle/login", json=login) as answer:
            headers = {"X-Vault-Token": (await answer.json())["auth"]["client_token"]}
        gate = asyncio.Semaphore(concurrency)

        async def read(p: int) -> None:
            async with gate:
                url = f"{server.address}/v1/{MOUNT}/data/app/{p:05d}"
                async with session.get(url, headers=headers) as response:
                    json.loads(await response.read())

        gc.collect()
        server0, cpu0, wall0 = server_cpu_s(server.pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(read(p) for p in range(paths)))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        server_cpu = server_cpu_s(server.pid) - server0
    return Row(
        name=f"floor: bare aiohttp GET, {concurrency} in flight, each path once",
        materializations=paths,
        reads=paths,
        logins=1,
        wall_s=wall,
        client_cpu_s=cpu,
        server_cpu_s=server_cpu,
        measured_reads=paths,
        measured_wall_s=wall,
        client_cpu_per_read_us=cpu / paths * 1e6,
        server_cpu_per_read_us=server_cpu / paths * 1e6,
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
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each secretsync/floor row (median)"
    )
    args = parser.parse_args(argv)

    server = start_openbao()
    try:
        server.enable_kv(MOUNT, version=2)
        asyncio.run(populate(server, paths=args.paths, keys=args.keys))
        role_id, secret_id = setup_approle(server)
        refs = fleet_refs(paths=args.paths, keys=args.keys, clusters=args.clusters)
        raised = model.VaultLimits(concurrency=args.concurrency, requests_per_second=1e6)
        runs = [
            (
                "source alone, one ref per path, rate limit raised",
                fleet_refs(paths=args.paths, keys=1, clusters=1),
                raised,
            ),
            (
                "fleet, default limits (500 req/s)",
                refs,
                model.VaultLimits(concurrency=args.concurrency),
            ),
            ("fleet, rate limit raised", refs, raised),
        ]
        rows = [
            median_of(
                lambda: asyncio.run(
                    run_floor(
                        server,
                        paths=args.paths,
                        concurrency=args.concurrency,
                        role_id=role_id,
                        secret_id=secret_id,
                    )
                ),
                args.repeat,
            )
        ]

        def secretsync_row(
            label: str, run_refs: list[model.ValueRef], limits: model.VaultLimits
        ) -> Row:
            return asyncio.run(
                run_secretsync(
                    server,
                    name=f"secretsync: {label}",
                    refs=run_refs,
                    limits=limits,
                    role_id=role_id,
                    secret_id=secret_id,
                )
            )

        for label, run_refs, limits in runs:
            rows.append(
                median_of(functools.partial(secretsync_row, label, run_refs, limits), args.repeat)
            )
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
        f"{len(refs)} materializations; OpenBao {server.address} (dev, in-memory, same host); "
        f"medians of {args.repeat} runs except the naive row"
    )
    header = (
        f"{'run':<58} {'reads':>8} {'logins':>6} {'wall s':>8} {'reads/s':>8} "
        f"{'client us/read':>14} {'server us/read':>14} {'speedup':>8}"
    )
    print(header)
    report = []
    for row in rows:
        speedup = naive.wall_s / row.wall_s
        mark = "*" if row.projected else " "
        print(
            f"{row.name:<58} {row.reads:>8} {row.logins:>6} {row.wall_s:>7.2f}{mark} "
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
                "machine": harness.machine(
                    platform=platform.platform(), loadavg=harness.load_average()
                ),
                "results": report,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Rotation during sweeps (fault row V9): while a writer keeps adding versions of a path, every
render delivers a version at least as new as the one before, and the last render after the
writer stops delivers the newest."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml

from secretsync.core.model import VaultAuth, VaultSettings
from secretsync.delivery import seal
from secretsync.engine.cycle import Engine
from secretsync.fleet import load
from secretsync.sinks.git.sink import GitSink
from secretsync.sources.vault import build_vault_source
from tests.support import canary, keys
from tests.support.openbao import OpenBao

MakeRepo = Callable[[dict[str, str | bytes]], Path]


def test_versions_never_go_backwards_while_rotating(
    fleet_repo: MakeRepo, openbao: OpenBao, unique: str
) -> None:
    prefix = canary.new("rot")
    openbao.write_kv("secret", f"{unique}/rot", {"token": f"{prefix}-0"})
    clusters = "---\n".join(
        f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: c{i}, labels: {{env: prod}}}}\n"
        f"spec: {{sealedSecrets: {{certFile: certs/c{i}.pem}}}}\n"
        for i in range(3)
    )
    root = fleet_repo(
        {
            "secretsync.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: rot}\n"
                f"spec: {{sources: {{vault: {{address: '{openbao.address}'}}}}}}\n"
            ),
            "clusters/all.yaml": clusters,
            **{f"certs/c{i}.pem": keys.cert_pem(keys.rsa_key(i)) for i in range(3)},
            "secrets/rot.yaml": (
                "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: rot}\n"
                "spec:\n  clusterSelector: {}\n  target: {name: rot, namespace: app}\n"
                f"  data: {{token: {{vault: {{path: {unique}/rot, key: token}}}}}}\n"
            ),
        }
    )
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        deadline = time.monotonic() + 60  # bounded in time and count
        while not stop.is_set() and written[0] < 100_000 and time.monotonic() < deadline:
            written[0] += 1
            openbao.write_kv("secret", f"{unique}/rot", {"token": f"{prefix}-{written[0]}"})

    def delivered() -> list[int]:
        out = []
        for i in range(3):
            manifest = yaml.safe_load((root / f"rendered/c{i}/app/rot.yaml").read_text())
            value = seal.unseal_manifest(manifest, [keys.rsa_key(i)])["token"].decode()
            out.append(int(value.rsplit("-", 1)[1]))
        return out

    async def cycle() -> None:
        fleet = load.load_fleet(root)
        assert fleet.vault is not None
        settings = VaultSettings(address=openbao.address, auth=VaultAuth(method="token"))
        source = build_vault_source(settings, env={"VAULT_TOKEN": openbao.root_token}, root=root)
        engine = Engine(
            sources={"vault": source},
            sinks=[GitSink(out_dir=root / "rendered")],
            hmac_key=b"rot",
            clock=lambda: datetime.now(UTC),
        )
        try:
            report = await engine.run_cycle(fleet)
        finally:
            await source.aclose()
        assert report.ok, report.failures

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[list[int]] = []
    try:
        for _ in range(8):
            asyncio.run(cycle())
            versions = delivered()
            assert len(set(versions)) == 1, (
                "one read per cycle: every cluster gets the same version"
            )
            seen.append(versions)
    finally:
        stop.set()
        thread.join(timeout=30)
    firsts = [v[0] for v in seen]
    assert firsts == sorted(firsts), f"a version went backwards: {firsts}"
    assert firsts[-1] > firsts[0], "the writer rotated during the sweeps"
    asyncio.run(cycle())
    assert delivered() == [written[0]] * 3

"""Rotation without webhooks against a real OpenBao: `VaultSource.current_versions` reads KV v2
metadata only, and `serve --poll-interval` turns a new version of a used path into a narrowed
cycle that delivers the new value, while unchanged paths trigger nothing.

Requests are counted on the wire by `CountingProxy`; every value is a canary.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from secretsync.app import wiring
from secretsync.core import errors
from secretsync.daemon.service import Daemon
from secretsync.daemon.settings import DaemonSettings
from secretsync.delivery import seal
from tests.adapters.test_vault import FAST, loc, make_source
from tests.support import canary, keys
from tests.support.openbao import CountingProxy, OpenBao

MakeRepo = Callable[[dict[str, str | bytes]], Path]


async def test_current_versions_reads_metadata_only(
    openbao: OpenBao, proxy: CountingProxy, unique: str
) -> None:
    openbao.write_kv("secret", f"{unique}/a", {"k": canary.new("a1")})
    openbao.write_kv("secret", f"{unique}/a", {"k": canary.new("a2")})
    openbao.write_kv("secret", f"{unique}/b", {"k": canary.new("b1")})
    openbao.enable_kv(f"{unique}-v1", version=1)
    openbao.write_kv(f"{unique}-v1", "c", {"k": canary.new("c1")}, version=1)
    source = make_source(proxy.address, env={"VAULT_TOKEN": openbao.root_token})
    wanted = [
        loc("secret", f"{unique}/a"),
        loc("secret", f"{unique}/b"),
        loc("secret", f"{unique}/a", version=1),  # pinned: never changes, not asked
        loc("secret", f"{unique}/missing"),
        loc(f"{unique}-v1", "c"),  # KV v1 keeps no versions
    ]
    try:
        assert await source.current_versions(wanted) == {
            wanted[0]: 2,
            wanted[1]: 1,
            wanted[2]: None,
            wanted[3]: None,
            wanted[4]: None,
        }
        openbao.write_kv("secret", f"{unique}/b", {"k": canary.new("b2")})
        assert (await source.current_versions(wanted[:2]))[wanted[1]] == 2
    finally:
        await source.aclose()
    assert proxy.count("GET", "/v1/secret/data/") == 0
    assert proxy.count("GET", f"/v1/{unique}-v1/") == 0
    assert proxy.count("GET", f"/v1/secret/metadata/{unique}/a") == 2
    assert proxy.count("GET", f"/v1/secret/metadata/{unique}/b") == 2
    assert proxy.count("GET", f"/v1/secret/metadata/{unique}/missing", status=404) == 1
    counters = source.counters
    assert counters.reads == 0
    assert counters.bytes_read == 0
    assert counters.metadata_reads == 4
    assert counters.failures == {"not_found": 1}


async def test_metadata_denied_is_none_and_a_dead_server_raises(
    openbao: OpenBao, unique: str
) -> None:
    openbao.write_kv("secret", f"{unique}/a", {"k": canary.new("a1")})
    client = openbao.client()
    client.sys.create_or_update_policy(
        unique,
        f'path "secret/data/{unique}/*" {{ capabilities = ["read"] }}\n'
        'path "sys/internal/ui/mounts/*" { capabilities = ["read"] }\n',
    )
    token = client.auth.token.create(policies=[unique], ttl="10m")["auth"]["client_token"]
    source = make_source(openbao.address, env={"VAULT_TOKEN": token})
    try:
        where = loc("secret", f"{unique}/a")
        assert await source.current_versions([where]) == {where: None}
        assert source.counters.failures == {"denied": 1}
        assert (await source.fetch(where)).version == "1"  # the data policy still reads
    finally:
        await source.aclose()

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    source = make_source(dead, env={"VAULT_TOKEN": "t"}, kv_version=2, retry=FAST)
    try:
        with pytest.raises(errors.SourceUnavailable, match="metadata"):
            await source.current_versions([loc("secret", f"{unique}/a")])
    finally:
        await source.aclose()


FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {{name: poll}}
spec:
  sources:
    vault: {{address: "{address}", kvMount: secret}}
  output: {{dir: rendered}}
"""

CLUSTER_AND_SECRETS = """\
apiVersion: secretsync.dev/v1alpha1
kind: Cluster
metadata: {{name: sealed-one, labels: {{env: prod}}}}
spec: {{delivery: sealed, sealedSecrets: {{certFile: certs/sealed-one.pem}}}}
---
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {{name: db}}
spec:
  clusterSelector: {{}}
  target: {{name: db, namespace: apps}}
  data:
    password: {{vault: {{path: "{unique}/db", key: password}}}}
---
apiVersion: secretsync.dev/v1alpha1
kind: FleetSecret
metadata: {{name: api}}
spec:
  clusterSelector: {{}}
  target: {{name: api, namespace: apps}}
  data:
    token: {{vault: {{path: "{unique}/api", key: token}}}}
"""


def opened(root: Path, name: str) -> dict[str, bytes]:
    path = root / "rendered" / "sealed-one" / "apps" / f"{name}.yaml"
    if not path.exists():
        return {}
    return seal.unseal_manifest(yaml.safe_load(path.read_text()), [keys.rsa_key(0)])


async def wait_for(probe: Callable[[], bool], *, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not probe():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {deadline_s} s")
        await asyncio.sleep(0.05)  # re-check interval under the deadline above


async def test_serve_poll_delivers_a_new_version_of_a_used_path(
    openbao: OpenBao, proxy: CountingProxy, unique: str, fleet_repo: MakeRepo
) -> None:
    db1, api1, db2 = canary.new("db1"), canary.new("api1"), canary.new("db2")
    openbao.write_kv("secret", f"{unique}/db", {"password": db1})
    openbao.write_kv("secret", f"{unique}/api", {"token": api1})
    root = fleet_repo(
        {
            "secretsync.yaml": FLEET.format(address=proxy.address, unique=unique),
            "clusters/all.yaml": CLUSTER_AND_SECRETS.format(unique=unique),
            "certs/sealed-one.pem": keys.cert_pem(keys.rsa_key(0)),
        }
    )
    settings = DaemonSettings(
        fleet_path=root,
        hmac_key=b"poll-test-hmac-key",
        env={"VAULT_TOKEN": openbao.root_token},
        port=0,
        interval_s=3600,  # no full cycle during the test: only the poll can bring db2
        kube=False,
        poll_interval_s=1.0,
    )
    daemon = Daemon(settings=settings, make_sources=wiring.build_sources)
    assert daemon.poller is not None
    poller = daemon.poller
    served = asyncio.create_task(daemon.serve())
    try:
        await wait_for(
            lambda: (
                opened(root, "db") == {"password": db1.encode()}
                and opened(root, "api") == {"token": api1.encode()}
            ),
            deadline_s=30,
            what="the start cycle",
        )
        await wait_for(lambda: poller.rounds >= 1, deadline_s=10, what="the baseline poll")
        assert set(poller.seen.values()) == {1}

        # unchanged paths: polls go on, read no value and trigger no cycle
        cycles, rounds = daemon.board.cycles, poller.rounds
        data_reads = proxy.count("GET", "/v1/secret/data/")
        await wait_for(lambda: poller.rounds >= rounds + 2, deadline_s=10, what="two polls")
        assert daemon.board.cycles == cycles
        assert proxy.count("GET", "/v1/secret/data/") == data_reads
        assert proxy.count("GET", f"/v1/secret/metadata/{unique}/db") >= 3

        # a new version of one used path: a narrowed cycle for it alone delivers the value
        openbao.write_kv("secret", f"{unique}/db", {"password": db2})
        written = time.monotonic()
        await wait_for(
            lambda: opened(root, "db") == {"password": db2.encode()},
            deadline_s=5,
            what="the new db password delivered by the poll",
        )
        assert time.monotonic() - written < 5
        await wait_for(lambda: daemon.board.cycles > cycles, deadline_s=5, what="cycle count")
        last = daemon.board.last_cycle
        assert last is not None and last.trigger == "poll"
        assert daemon.board.cycles == cycles + 1
        assert proxy.count("GET", f"/v1/secret/data/{unique}/db") == 2
        assert proxy.count("GET", f"/v1/secret/data/{unique}/api") == 1
        assert opened(root, "api") == {"token": api1.encode()}
        metrics = daemon.metrics.render().decode()
        assert 'secretsync_cycles_total{outcome="ok",trigger="poll"} 1.0' in metrics
    finally:
        daemon.stop()
        async with asyncio.timeout(30):
            await served
    for text in (metrics, str(daemon.board.document())):
        assert canary.find_in_text(text) == []

"""Where the Vault token goes: the operator's address wins over the fleet repo's, and plain
HTTP reaches only loopback unless the Fleet says `tls: {insecure: true}` (issue 12, item 6).

Each attack runs the real `secretsync` process with a canary token and a listener that counts
the requests carrying it; the count is the evidence:

- a fleet repo writer points `sources.vault.address` at a listener of theirs: without an
  override the token reaches it; with `--vault-address` or `$SECRETSYNC_VAULT_ADDRESS` it
  reaches the real OpenBao only (0 requests at the listener) and the render succeeds;
- plain `http://` to a host that is not loopback (a listener in a network namespace of the
  test's own, on a 10.231.x.2 address): refused before any request (exit 2, file, line and
  field named), whether it comes from the Fleet or from `$VAULT_ADDR`; with
  `tls: {insecure: true}` it is used, with a warning on every run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import canary, cli, keys, netns
from tests.support.openbao import CountingProxy, OpenBao

MakeRepo = Callable[[dict[str, str | bytes]], Path]
DEADLINE_S = 60.0


def fleet_files(address: str, unique: str, tls: str = "") -> dict[str, str | bytes]:
    address_line = f'      address: "{address}"\n' if address else ""
    return {
        "secretsync.yaml": (
            "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: address}\n"
            "spec:\n  sources:\n    vault:\n"
            f"{address_line}      auth: {{method: token}}\n" + (f"      {tls}\n" if tls else "")
        ),
        "clusters/prod.yaml": (
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            "metadata: {name: prod-use1, labels: {env: prod}}\n"
            "spec: {sealedSecrets: {certFile: certs/prod-use1.pem}}\n"
        ),
        "certs/prod-use1.pem": keys.cert_pem(keys.rsa_key(0)),
        "secrets/db.yaml": (
            "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\nmetadata: {name: db}\n"
            "spec:\n  clusterSelector: {}\n  target: {name: db, namespace: payments}\n"
            f"  data:\n    password: {{vault: {{path: {unique}/db, key: password}}}}\n"
        ),
    }


def secretsync(
    *args: str, token: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    full.pop("SECRETSYNC_VAULT_ADDRESS", None)
    full.update({"SECRETSYNC_HMAC_KEY": "vault-address", "VAULT_TOKEN": token, **(env or {})})
    return cli.run(*args, env=full, timeout=DEADLINE_S, text=True)


def assert_clean(needles: list[str], *texts: str) -> None:
    for needle in needles:
        assert all(needle not in text for text in texts), "a canary reached the output"


def canary_token(bao: OpenBao, unique: str) -> str:
    """A real OpenBao token whose id is a canary, allowed to read the test's paths only."""
    token = canary.new("vault-token")
    client = bao.client()
    client.sys.create_or_update_policy(
        unique,
        f'path "secret/data/{unique}/*" {{ capabilities = ["read"] }}\n'
        'path "sys/internal/ui/mounts/*" { capabilities = ["read"] }\n',
    )
    client.auth.token.create(id=token, policies=[unique], ttl="10m")
    return token


async def test_the_operator_address_wins_over_the_fleet_repo(
    fleet_repo: MakeRepo, openbao: OpenBao, unique: str
) -> None:
    value = canary.new("db-password")
    openbao.write_kv("secret", f"{unique}/db", {"password": value})
    token = canary_token(openbao, unique)
    # The repo writer's listener: it even forwards to the real server, as a relay would.
    async with CountingProxy(openbao.address) as theirs:
        root = fleet_repo(fleet_files(theirs.address, unique))

        def carrying() -> int:
            return sum(1 for s in theirs.seen if s.token == token)

        plain = await asyncio.to_thread(secretsync, "render", str(root), token=token)
        assert plain.returncode == 0, plain.stderr[-2000:]
        stolen = carrying()
        assert stolen >= 1  # the attack: the Fleet's address got the token

        flag = await asyncio.to_thread(
            secretsync, "render", str(root), "--vault-address", openbao.address, token=token
        )
        assert flag.returncode == 0, flag.stderr[-2000:]
        assert carrying() == stolen, "the Fleet's address was used despite --vault-address"
        assert "the Fleet's address is not used" in flag.stderr

        by_env = await asyncio.to_thread(
            secretsync,
            "plan",
            str(root),
            token=token,
            env={"SECRETSYNC_VAULT_ADDRESS": openbao.address},
        )
        assert by_env.returncode == 0, by_env.stderr[-2000:]
        assert carrying() == stolen
        for proc in (plain, flag, by_env):
            assert_clean([value, token], proc.stdout, proc.stderr)
    assert (root / "rendered" / "prod-use1" / "payments" / "db.yaml").is_file()


async def test_serve_takes_the_operator_address_too(
    fleet_repo: MakeRepo, openbao: OpenBao, unique: str, tmp_path: Path
) -> None:
    openbao.write_kv("secret", f"{unique}/db", {"password": canary.new("db-password")})
    token = canary_token(openbao, unique)
    async with CountingProxy(openbao.address) as theirs:
        root = fleet_repo(fleet_files(theirs.address, unique))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(
            {
                "VAULT_TOKEN": token,
                "SECRETSYNC_HMAC_KEY": "vault-address",
                "SECRETSYNC_VAULT_ADDRESS": openbao.address,
            }
        )
        log = tmp_path / "serve.log"
        proc = cli.serve(
            root, "--listen", "127.0.0.1:0", "--interval", "600", "--git", "--no-kube",
            "--no-leader-elect", env=env, log=log,
        )  # fmt: skip
        rendered = root / "rendered" / "prod-use1" / "payments" / "db.yaml"
        try:
            deadline = time.monotonic() + DEADLINE_S
            while not rendered.is_file():  # the first cycle's output
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                await asyncio.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert [s for s in theirs.seen if s.token == token] == []
    assert token not in log.read_text()


def test_a_malformed_override_is_a_usage_error(fleet_repo: MakeRepo) -> None:
    root = fleet_repo(fleet_files("https://vault.example", "x"))
    proc = secretsync("render", str(root), "--vault-address", "https://u:p@vault", token="t")
    assert proc.returncode == 2
    assert "--vault-address" in proc.stderr and "credentials" in proc.stderr
    assert not (root / "rendered").exists()


# --- plain HTTP to a host that is not loopback -----------------------------------------------

LISTENER = textwrap.dedent(
    """
    import http.server, sys
    ip, port, record = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            with open(record, "a") as fh:
                fh.write((self.headers.get("X-Vault-Token") or "-") + "\\n")
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        do_GET = do_POST = do_PUT = answer
        def log_message(self, *args):
            pass
    http.server.HTTPServer((ip, port), Handler).serve_forever()
    """
)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain-HTTP listener on a non-loopback address; yields (address, record file)."""
    record = tmp_path / "tokens-seen"
    record.touch()
    with netns.network_host() as host:
        start_listener(host, port=8200, record=record)
        yield f"http://{host.ip}:8200", record


def start_listener(host: netns.TestHost, *, port: int, record: Path) -> None:
    argv = ["ip", "netns", "exec", host.namespace, sys.executable, "-c", LISTENER]
    proc = subprocess.Popen([*argv, host.ip, str(port), str(record)])
    host.processes.append(proc)
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(f"http://{host.ip}:{port}/ready", timeout=1)
        except urllib.error.HTTPError:
            break  # the 404: it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("listener did not start") from None
            time.sleep(0.1)
    record.write_text("")


def seen(record: Path, token: str) -> int:
    return record.read_text().splitlines().count(token)


def test_plain_http_to_another_host_is_refused_before_any_request(
    fleet_repo: MakeRepo, remote: tuple[str, Path]
) -> None:
    address, record = remote
    token = canary.new("vault-token")
    root = fleet_repo(fleet_files(address, "apps"))
    for command in ("validate", "render", "plan"):
        proc = secretsync(command, str(root), token=token)
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        assert "secretsync.yaml:7: spec.sources.vault.address: plain http://" in proc.stderr
    # the same address from the environment (no address in the Fleet)
    root = fleet_repo(fleet_files("", "apps"))
    proc = secretsync("render", str(root), token=token, env={"VAULT_ADDR": address})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "VAULT_ADDR: plain http://" in proc.stderr
    proc = secretsync("render", str(root), "--vault-address", address, token=token)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--vault-address / $SECRETSYNC_VAULT_ADDRESS: plain http://" in proc.stderr
    assert seen(record, token) == 0
    assert not (root / "rendered").exists()


def test_insecure_allows_plain_http_with_a_warning_on_every_run(
    fleet_repo: MakeRepo, remote: tuple[str, Path]
) -> None:
    address, record = remote
    token = canary.new("vault-token")
    root = fleet_repo(fleet_files(address, "apps", tls="tls: {insecure: true}"))
    assert secretsync("validate", str(root), token=token).returncode == 0
    for run in range(2):
        proc = secretsync("render", str(root), token=token)
        assert proc.returncode == 1, proc.stderr[-2000:]  # the listener has no values
        assert f"plain HTTP to {address}" in proc.stderr, (run, proc.stderr[-2000:])
        assert "unencrypted" in proc.stderr
        assert_clean([token], proc.stdout, proc.stderr)
    assert seen(record, token) >= 2  # insecure means what it says: the token went

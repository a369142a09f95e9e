"""SOPS metadata naming a key the Fleet does not allow never reaches sops (issue 12, item 1).

The attack: a fleet-repo writer adds an `hc_vault` key group naming their own address to a
SOPS file. sops, run with VAULT_TOKEN and HOME in its environment, would send the token (or the
one in ~/.vault-token) there while it tries each key. Here a listener on 127.0.0.1 plays the
attacker and counts the requests that carry either canary token; the example fleet's real
age-encrypted files (YAML, dotenv, JSON) are poisoned the way a pull request would, and every
command runs as a user runs it: the CLI as a process. `validate`, `plan`, `render` and
`sync --dry-run` exit 2 naming the file and the key group, `scan` exits 1 naming them, `serve`
refuses the fleet; the listener sees nothing. Allowing the address in the Fleet
(`sources.sops.vaultTransit`) is what lets sops go there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import canary, cli
from tests.support.served import ServeClient

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fleet"
DEMO_KEYS = REPO / "examples" / "demo-keys"
REFUSING = [["validate"], ["plan"], ["render"], ["sync", "--dry-run"]]


@dataclass
class Listener:
    """An HTTP server on 127.0.0.1 recording the X-Vault-Token of every request it gets."""

    server: ThreadingHTTPServer
    tokens: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def carrying(self, *secrets: str) -> int:
        return sum(1 for t in self.tokens if t in secrets)


@pytest.fixture
def listener() -> Iterator[Listener]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.headers.get("X-Vault-Token", ""))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = _answer  # the names http.server calls

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Listener(server, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _vault_group(address: str, indent: str) -> str:
    return (
        f"{indent}hc_vault:\n"
        f"{indent}    - vault_address: {address}\n"
        f"{indent}      engine_path: transit\n"
        f"{indent}      key_name: sops\n"
        f'{indent}      created_at: "2026-01-01T00:00:00Z"\n'
        f"{indent}      enc: vault:v1:bm90LWEtcmVhbC1rZXk=\n"
    )


def _drop_age(text: str) -> tuple[str, str]:
    """A YAML SOPS file without its age key (sops would try a working age key first and
    contact nothing else): the text up to its metadata's keys, and the rest."""
    head, _, meta = text.partition("\nsops:\n")
    _, _, rest = meta.partition("    lastmodified:")
    return f"{head}\nsops:\n", f"    lastmodified:{rest}"


def yaml_top_level(root: Path, address: str) -> tuple[str, str]:
    rel = "sops/prod/payments.yaml"  # read by a literal path and by a templated one
    path = root / rel
    head, rest = _drop_age(path.read_text())
    path.write_text(head + _vault_group(address, "    ") + rest)
    return rel, "hc_vault[0]"


def yaml_key_groups(root: Path, address: str) -> tuple[str, str]:
    rel = "sops/staging/payments.yaml"
    path = root / rel
    head, rest = _drop_age(path.read_text())
    vault = _vault_group(address, "          ").replace(
        "          hc_vault:", "        - hc_vault:"
    )
    path.write_text(f"{head}    key_groups:\n{vault}{rest}")
    return rel, "key_groups[0].hc_vault[0]"


def dotenv(root: Path, address: str) -> tuple[str, str]:
    rel = "sops/prod/monitoring.env"  # read only through a templated path
    path = root / rel
    kept = [line for line in path.read_text().splitlines() if not line.startswith("sops_age__")]
    path.write_text(
        "\n".join(kept) + "\n"
        f"sops_hc_vault__list_0__map_vault_address={address}\n"
        "sops_hc_vault__list_0__map_engine_path=transit\n"
        "sops_hc_vault__list_0__map_key_name=sops\n"
        "sops_hc_vault__list_0__map_created_at=2026-01-01T00:00:00Z\n"
        "sops_hc_vault__list_0__map_enc=vault:v1:bm90LWEtcmVhbC1rZXk=\n"
    )
    return rel, "hc_vault[0]"


def json_spelled_in_capitals(root: Path, address: str) -> tuple[str, str]:
    """Go's JSON decoder, which sops uses, reads `HC_VAULT` as `hc_vault`."""
    rel = "sops/shared/registry.json"
    path = root / rel
    document = json.loads(path.read_text())
    del document["sops"]["age"]
    document["sops"]["HC_VAULT"] = [
        {
            "vault_address": address,
            "engine_path": "transit",
            "key_name": "sops",
            "created_at": "2026-01-01T00:00:00Z",
            "enc": "vault:v1:bm90LWEtcmVhbC1rZXk=",
        }
    ]
    path.write_text(json.dumps(document, indent=4))
    return rel, "HC_VAULT"


POISONS: dict[str, Callable[[Path, str], tuple[str, str]]] = {
    "yaml": yaml_top_level,
    "yaml-key-groups": yaml_key_groups,
    "dotenv": dotenv,
    "json-capitals": json_spelled_in_capitals,
}


@dataclass
class Attack:
    root: Path
    home: Path
    env: dict[str, str]
    tokens: tuple[str, str]  # VAULT_TOKEN, ~/.vault-token


@pytest.fixture
def attack(tmp_path: Path) -> Attack:
    root = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, root, symlinks=True)
    shutil.rmtree(root / "rendered")
    home = tmp_path / "home"
    home.mkdir()
    in_env, in_home = canary.new("vault-token"), canary.new("vault-token-file")
    (home / ".vault-token").write_text(in_home)
    canary.FLEET_REPOS.append(root)
    env = {
        **os.environ,
        "HOME": str(home),
        "VAULT_TOKEN": in_env,
        "SOPS_AGE_KEY_FILE": str(DEMO_KEYS / "age.key"),
        "SECRETSYNC_HMAC_KEY": "policy-test-key",
        "SECRETSYNC_CACHE_DIR": "",
        "SECRETSYNC_LOG_LEVEL": "debug",
    }
    return Attack(root, home, env, (in_env, in_home))


def run(attack: Attack, *args: str) -> subprocess.CompletedProcess[str]:
    proc = cli.run(*args, env=attack.env, timeout=120, text=True)
    canary.keep(f"secretsync {args[0]} stdout", proc.stdout)
    canary.keep(f"secretsync {args[0]} stderr", proc.stderr)
    return proc


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_forged_vault_key_group_is_refused_by_every_command_and_gets_no_token(
    poison: str, attack: Attack, listener: Listener
) -> None:
    rel, group = POISONS[poison](attack.root, listener.address)
    outcomes: dict[str, tuple[int, int]] = {}  # command -> (exit code, requests with a token)
    for command in REFUSING:
        before = listener.carrying(*attack.tokens)
        proc = run(attack, *command, str(attack.root))
        outcomes[" ".join(command)] = (proc.returncode, listener.carrying(*attack.tokens) - before)
        if proc.returncode == 2:
            refusal = re.search(
                rf"^{re.escape(rel)}:\d+: sops: {re.escape(group)}: .*$", proc.stderr, re.M
            )
            assert refusal is not None, (command, proc.stderr[-2000:])
            assert "refused" in refusal.group(0)
    before = listener.carrying(*attack.tokens)
    scanned = run(attack, "scan", str(attack.root))
    outcomes["scan"] = (scanned.returncode, listener.carrying(*attack.tokens) - before)

    expected = {" ".join(c): (2, 0) for c in REFUSING} | {"scan": (1, 0)}
    assert outcomes == expected, f"(exit code, requests carrying a token) per command: {outcomes}"
    named = str(attack.root / rel)  # scan names files under the folder as given
    assert re.search(
        rf"^{re.escape(named)}:\d+: sops-key-not-allowed: {re.escape(group)}: ",
        scanned.stdout,
        re.M,
    ), scanned.stdout
    as_json = run(attack, "scan", "-o", "json", str(attack.root))
    assert as_json.returncode == 1
    assert [
        (f["file"], f["kind"])
        for f in json.loads(as_json.stdout)["findings"]
        if f["message"].startswith(f"{group}: ")
    ] == [(named, "sops-key-not-allowed")]
    assert listener.tokens == []  # nothing at all reached the listener
    assert not (attack.root / "rendered").exists()  # render wrote nothing


def test_serve_refuses_the_fleet_and_sends_no_token(
    attack: Attack, listener: Listener, tmp_path: Path
) -> None:
    rel, group = yaml_top_level(attack.root, listener.address)
    log = tmp_path / "serve.log"
    proc = cli.serve(
        attack.root, "--listen", "127.0.0.1:0", "--interval", "600", "--no-kube",
        env=attack.env, log=log,
    )  # fmt: skip
    try:
        served = ServeClient(proc, log, b"")
        served.wait_listening(timeout=30)

        def refused() -> bool:
            error = served.status()["fleet"].get("error") or ""
            return rel in error and group in error

        served.wait_for(refused, timeout=30, what="the fleet refused for its SOPS file")
        assert listener.carrying(*attack.tokens) == 0
        assert listener.tokens == []
    finally:
        cli.stop(proc, graceful_s=30)
        canary.keep("serve log", log.read_text(errors="replace"))


def test_an_allowed_transit_address_is_what_lets_sops_go_there(
    attack: Attack, listener: Listener
) -> None:
    """The same forged file with its address in the Fleet: sops asks it (the token goes where the
    Fleet says it may; no key there, so the objects built from the file fail, exit 1). Only
    VAULT_TOKEN is sent: with it set, HOME and its ~/.vault-token stay out of reach."""
    rel, _ = yaml_top_level(attack.root, listener.address)
    fleet_file = attack.root / "secretsync.yaml"
    fleet_file.write_text(
        fleet_file.read_text().replace(
            "    sops: {}",
            "    sops:\n"
            "      keyTypes: [age, hc_vault]\n"
            f"      vaultTransit: [{{address: '{listener.address}'}}]",
        )
    )
    validated = run(attack, "validate", str(attack.root))
    assert validated.returncode == 0, validated.stderr[-2000:]
    assert run(attack, "scan", str(attack.root)).returncode == 0
    rendered = run(attack, "render", str(attack.root))
    assert rendered.returncode == 1, rendered.stderr[-2000:]
    assert f"sops:{rel}: no available key could decrypt" in rendered.stderr
    assert listener.carrying(attack.tokens[0]) > 0
    assert listener.carrying(attack.tokens[1]) == 0


def test_the_token_file_under_home_is_not_sent_either(attack: Attack, listener: Listener) -> None:
    """Without VAULT_TOKEN, sops would read ~/.vault-token and send that."""
    rel, group = yaml_top_level(attack.root, listener.address)
    del attack.env["VAULT_TOKEN"]
    planned = run(attack, "plan", str(attack.root))
    assert (planned.returncode, listener.carrying(attack.tokens[1])) == (2, 0), planned.stderr[
        -2000:
    ]
    assert f"{rel}:7: sops: {group}: key type hc_vault is not allowed" in planned.stderr
    assert listener.tokens == []

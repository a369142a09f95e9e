"""The Vault address policy: who sets the address, and plain HTTP only to loopback.

The live side (OpenBao, a listener that counts the token, a non-loopback host in a network
namespace) is `tests/adapters/test_vault_address.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from secretsync.core import errors, model
from secretsync.fleet import load
from secretsync.sources import vault, vaultaddress


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_loopback_hosts(host: str) -> None:
    assert vaultaddress.is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "0.0.0.0",
        "localhost.",
        "vault.localhost",
        "127.0.0.1.nip.io",
        "::ffff:10.0.0.1",
        "::",
        "vault",
        "",
    ],
)
def test_hosts_that_are_not_loopback(host: str) -> None:
    assert not vaultaddress.is_loopback(host)


@pytest.mark.parametrize(
    ("url", "insecure", "refused"),
    [
        ("http://vault.example:8200", False, True),
        ("http://10.1.2.3:8200", False, True),
        ("HTTP://vault.example", False, True),
        ("http://vault.example:8200", True, False),
        ("https://vault.example:8200", False, False),
        ("http://127.0.0.1:8200", False, False),
        ("http://localhost:8200", False, False),
        ("http://[::1]:8200", False, False),
    ],
)
def test_plain_http_only_to_loopback_unless_insecure(
    url: str, insecure: bool, refused: bool
) -> None:
    problem = vaultaddress.plain_http_problem(url, insecure=insecure)
    assert (problem is not None) == refused
    if refused:
        assert "tls: {insecure: true}" in (problem or "")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://vault", "http:// or https://"),
        ("https://", "http:// or https://"),
        ("https://vault:port", "http:// or https://"),
        ("https://user:pw@vault", "credentials"),
        ("https://vault?x=1", "query"),
        ("https://vault\n.example", "control characters"),
        ("https://vault .example", "spaces"),
    ],
)
def test_address_form(url: str, message: str) -> None:
    assert message in (vaultaddress.form_problem(url) or "")


def test_the_operator_wins_then_the_fleet_then_the_environment() -> None:
    env = {"VAULT_ADDR": "https://env:1/", "BAO_ADDR": "https://bao:2"}
    choose = vaultaddress.choose
    assert choose(override="https://op:3/", fleet="https://fleet:4", env=env) == (
        vaultaddress.Chosen("https://op:3", vaultaddress.OVERRIDE)
    )
    assert choose(override=" ", fleet="https://fleet:4", env=env) == vaultaddress.Chosen(
        "https://fleet:4", "sources.vault.address"
    )
    assert choose(override=None, fleet="", env=env) == vaultaddress.Chosen(
        "https://env:1", "VAULT_ADDR"
    )
    assert choose(override=None, fleet=None, env={"BAO_ADDR": "https://bao:2"}) == (
        vaultaddress.Chosen("https://bao:2", "BAO_ADDR")
    )
    assert choose(override=None, fleet=None, env={}) is None


# --- the loader: file, line and field -------------------------------------------------------

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
spec:
  sources:
    vault:
      address: ADDRESS
      TLS
"""


def fleet_with(address: str, tls: str = "") -> dict[str, str | bytes]:
    return {"secretsync.yaml": FLEET.replace("ADDRESS", address).replace("TLS", tls)}


@pytest.mark.parametrize(
    "address", ["http://vault.example:8200", "http://10.0.0.7:8200", "http://vault"]
)
def test_plain_http_to_another_host_is_refused_naming_file_line_and_field(
    address: str, fleet_repo: Callable[[dict[str, str | bytes]], Path]
) -> None:
    root = fleet_repo(fleet_with(address))
    with pytest.raises(errors.ConfigErrors) as raised:
        load.load_fleet(root)
    [error] = raised.value.errors
    assert (error.file, error.line, error.field) == (
        "secretsync.yaml",
        7,
        "spec.sources.vault.address",
    )
    assert "plain http://" in error.message


@pytest.mark.parametrize(
    ("address", "tls", "insecure"),
    [
        ("http://vault.example:8200", "tls: {insecure: true}", True),
        ("http://127.0.0.1:8200", "", False),
        ("http://localhost:8200", "", False),
        ("https://vault.example:8200", "", False),
        ("https://vault.example:8200", "tls: {insecure: false}", False),
    ],
)
def test_https_loopback_or_insecure_load(
    address: str, tls: str, insecure: bool, fleet_repo: Callable[[dict[str, str | bytes]], Path]
) -> None:
    fleet = load.load_fleet(fleet_repo(fleet_with(address, tls)))
    assert fleet.vault is not None
    assert fleet.vault.address == address
    assert fleet.vault.tls.insecure is insecure


def test_a_malformed_fleet_address_is_refused_when_the_fleet_loads(
    fleet_repo: Callable[[dict[str, str | bytes]], Path],
) -> None:
    root = fleet_repo(fleet_with('"https://user:pw@vault.example"'))
    with pytest.raises(errors.ConfigErrors) as raised:
        load.load_fleet(root)
    assert [e.render() for e in raised.value.errors] == [
        "secretsync.yaml:7: spec.sources.vault.address: "
        "must not carry credentials, a query or a fragment"
    ]


# --- the source: the address in effect --------------------------------------------------------


def build(
    settings: model.VaultSettings, env: dict[str, str], address: str | None = None
) -> vault.VaultSource:
    return vault.build_vault_source(
        settings, env={"VAULT_TOKEN": "t", **env}, root=Path("/"), address=address
    )


def test_the_override_wins_over_the_fleet_and_the_environment() -> None:
    settings = model.VaultSettings(address="http://127.0.0.1:1")
    source = build(settings, {"VAULT_ADDR": "https://env:2"}, address="https://operator:3/")
    assert source.address == "https://operator:3"
    assert build(settings, {"VAULT_ADDR": "https://env:2"}).address == "http://127.0.0.1:1"
    assert build(model.VaultSettings(), {"VAULT_ADDR": "https://env:2"}).address == "https://env:2"


@pytest.mark.parametrize(
    ("settings", "env", "override", "field"),
    [
        (model.VaultSettings(), {"VAULT_ADDR": "http://vault.example"}, None, "VAULT_ADDR"),
        (model.VaultSettings(), {"BAO_ADDR": "http://10.0.0.1:8200"}, None, "BAO_ADDR"),
        (
            model.VaultSettings(address="https://vault.example"),
            {},
            "http://vault.example",
            vaultaddress.OVERRIDE,
        ),
        (model.VaultSettings(address="http://vault.example"), {}, None, "sources.vault.address"),
    ],
)
def test_plain_http_from_anywhere_is_refused_naming_where_it_came_from(
    settings: model.VaultSettings, env: dict[str, str], override: str | None, field: str
) -> None:
    with pytest.raises(errors.ConfigError) as raised:
        build(settings, env, address=override)
    assert raised.value.field == field
    assert "plain http://" in raised.value.message


def test_insecure_plain_http_warns_every_time_the_source_is_built(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = model.VaultSettings(tls=model.VaultTLS(insecure=True))
    caplog.set_level(logging.WARNING, logger="secretsync.sources.vault")
    for _ in range(3):
        source = build(settings, {"VAULT_ADDR": "http://vault.example:8200"})
        assert source.address == "http://vault.example:8200"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("plain HTTP to http://vault.example:8200" in w for w in warnings)
    caplog.clear()
    build(settings, {"VAULT_ADDR": "http://127.0.0.1:8200"})
    build(settings, {"VAULT_ADDR": "https://vault.example:8200"})
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]

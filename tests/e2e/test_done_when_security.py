"""Issue 8 "Done when", offline, against a hidden fleet: one generated here, not the example.

The fleet has three sealed clusters (one pins its certificate's SHA-256), values in SOPS files
encrypted for a throwaway age key with the real sops binary, and odd values (newlines, CRLF,
quotes, `---`, bidi and zero-width characters, control characters, surrounding spaces). Every
command runs as a real `python -m secretsync` process at `--log-level debug`:

- odd values are sealed (by `render` and by `seal`) and unseal byte for byte, and no output
  line holds one, nor `<redacted>` (the redaction filter never had to step in);
- a SOPS file with a MAC mismatch, one with an altered ciphertext and one encrypted for another
  key fail only their secrets: exit 1, each file named, the rendered tree byte-identical;
- an alias bomb, a 64 MiB file, a `..` path and a symlink leaving the repo are refused within
  seconds: exit 2, the file named, nothing written (all five commands on the example fleet:
  tests/e2e/test_hostile_cli.py);
- an expired sealing certificate is refused (render exit 1, validate exit 2), nothing changes;
- a certificate swapped for another valid key under a `certificateSha256` pin is refused (exit
  2, both fingerprints named), nothing changes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from secretsync.delivery import seal
from tests.e2e.test_hostile_cli import alias_bomb
from tests.support import canary, cli, cycles, keys
from tests.support.sopstool import AgeKey, make_age_key, sops_encrypt

DEADLINE_S = 10.0  # per refused process, interpreter start included
HMAC = "hidden-fleet-hmac-key"
CLUSTERS = {"h-prod-a": 40, "h-prod-b": 41, "h-stage": 42}  # name -> tests/support/keys.py index
PINNED = "h-prod-b"
PROD_ONLY = ("tampered", "cipher", "wrongkey")

FLEET = """\
apiVersion: secretsync.dev/v1alpha1
kind: Fleet
metadata: {name: hidden}
spec:
  defaults: {delivery: sealed}
  output: {dir: rendered}
  sources: {sops: {timeoutSeconds: 20}}
"""


def cluster_doc(name: str, env: str, fmt: str, pin: str = "") -> str:
    pinned = f", certificateSha256: {pin}" if pin else ""
    return (
        "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
        f"metadata: {{name: {name}, labels: {{env: {env}, fmt: {fmt}}}}}\n"
        f"spec:\n  sealedSecrets: {{certFile: certs/{name}.pem{pinned}}}\n"
        "  allowedNamespaces: [apps]\n"
    )


def secret_doc(name: str, selector: str, data: dict[str, tuple[str, str]]) -> str:
    lines = "\n".join(
        f'    {key}: {{sops: {{file: "{file}", key: {ref}}}}}'
        for key, (file, ref) in sorted(data.items())
    )
    return (
        "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
        f"metadata: {{name: {name}}}\nspec:\n  clusterSelector: {selector}\n"
        f"  target: {{name: {name}, namespace: apps}}\n  data:\n{lines}\n"
    )


@dataclass
class Hidden:
    root: Path  # pristine, rendered once; tests work on copies
    key: AgeKey
    other_key: AgeKey
    home: Path
    odd: dict[str, dict[str, str]]  # env -> key -> value
    first: subprocess.CompletedProcess[bytes]

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SOPS_", "XDG_"))}
        return {
            **base,
            "HOME": str(self.home),  # no age keys of the machine's user
            "SOPS_AGE_KEY_FILE": str(self.key.file),
            "SECRETSYNC_HMAC_KEY": HMAC,
        }

    def copy(self, dest: Path, *, register: bool = True) -> Path:
        shutil.copytree(self.root, dest, symlinks=True)
        if register:
            canary.FLEET_REPOS.append(dest)
        return dest


def run(
    hidden: Hidden, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return cli.run("--log-level", "debug", *args, env=hidden.env(), stdin=stdin, timeout=120)


def seal_args(root: Path, cluster: str, value: Path) -> tuple[str, ...]:
    """`seal` of one value from a file, for `cluster`, as Secret apps/x."""
    command = ("seal", "-f", str(root), "--cluster", cluster, "--namespace", "apps", "--name", "x")
    return (*command, "--from-file", f"k={value}")


def text_of(proc: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    return proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def assert_no_value(proc: subprocess.CompletedProcess[bytes]) -> None:
    for text in text_of(proc):
        assert canary.find_in_text(text) == [], "a value reached the process output"
        assert "<redacted>" not in text, "a log line tried to print a value"


def tree(root: Path) -> dict[str, bytes]:
    return cycles.snapshot(root / "rendered")


def failed_objects(proc: subprocess.CompletedProcess[bytes]) -> set[tuple[str, str]]:
    report = json.loads(proc.stdout)
    return {
        (cluster, item["object"])
        for cluster, items in report["clusters"].items()
        for item in items
        if item["action"] == "failed"
    }


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> Hidden:
    base = tmp_path_factory.mktemp("hidden")
    key = make_age_key(tmp_path_factory.mktemp("hidden-age"))
    other = make_age_key(tmp_path_factory.mktemp("hidden-age-other"))
    home = tmp_path_factory.mktemp("hidden-home")
    root = base / "fleet"
    files: dict[str, bytes] = {"secretsync.yaml": FLEET.encode()}

    def encrypted(rel: str, plaintext: str, *, to: AgeKey = key) -> None:
        files[rel] = sops_encrypt(plaintext.encode(), name=rel, recipient=to.recipient)

    odd = {"prod": canary.odd_values(), "staging": canary.odd_values()}
    encrypted("sops/prod/odd.json", json.dumps(odd["prod"]))
    encrypted("sops/staging/odd.yaml", yaml.safe_dump(odd["staging"], allow_unicode=True))
    encrypted("sops/shared/plain.yaml", f"api:\n  token: {canary.new('plain')}\n")
    encrypted("sops/prod/tampered.yaml", f"password: {canary.new('mac')}\nnote_unencrypted: a\n")
    encrypted("sops/prod/cipher.json", json.dumps({"password": canary.new("cipher")}))
    encrypted("sops/prod/wrongkey.env", f"PASSWORD={canary.new('wrongkey')}\n")

    docs = []
    for name, index in CLUSTERS.items():
        pem = keys.cert_pem(keys.rsa_key(index))
        files[f"certs/{name}.pem"] = pem
        env, fmt = ("staging", "yaml") if name == "h-stage" else ("prod", "json")
        pin = seal.certificate_sha256(pem, source=name) if name == PINNED else ""
        docs.append(cluster_doc(name, env, fmt, pin))
    files["clusters/hidden.yaml"] = "---\n".join(docs).encode()
    odd_file = "sops/{{ cluster.labels.env }}/odd.{{ cluster.labels.fmt }}"
    secrets = {
        "odd": secret_doc("odd", "{}", {k: (odd_file, k) for k in odd["prod"]}),
        "plain": secret_doc("plain", "{}", {"token": ("sops/shared/plain.yaml", "api.token")}),
        "tampered": secret_doc(
            "tampered",
            "{matchLabels: {env: prod}}",
            {"pw": ("sops/prod/tampered.yaml", "password")},
        ),
        "cipher": secret_doc(
            "cipher", "{matchLabels: {env: prod}}", {"pw": ("sops/prod/cipher.json", "password")}
        ),
        "wrongkey": secret_doc(
            "wrongkey", "{matchLabels: {env: prod}}", {"pw": ("sops/prod/wrongkey.env", "PASSWORD")}
        ),
    }
    for name, text in secrets.items():
        files[f"secrets/{name}.yaml"] = text.encode()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    canary.FLEET_REPOS.append(root)
    made = Hidden(root, key, other, home, odd, subprocess.CompletedProcess([], 0))
    made.first = run(made, "-o", "json", "render", str(root))
    return made


def unseal(root: Path, cluster: str, rel: str) -> dict[str, bytes]:
    manifest = yaml.safe_load((root / "rendered" / cluster / rel).read_bytes())
    return seal.unseal_manifest(manifest, [keys.rsa_key(CLUSTERS[cluster])])


# --- odd values ------------------------------------------------------------------------------


def test_odd_values_are_sealed_byte_for_byte_and_debug_logs_show_none(hidden: Hidden) -> None:
    first = hidden.first
    out, err = text_of(first)
    assert first.returncode == 0, err[-2000:]
    assert "DEBUG secretsync.sources.sops: sops decrypt of sops:sops/prod/odd.json" in err
    assert_no_value(first)
    summary = json.loads(out)["summary"]
    assert (summary["created"], summary["failed"]) == (3 * 2 + 2 * 3, 0), summary
    for cluster in CLUSTERS:
        env = "staging" if cluster == "h-stage" else "prod"
        expected = {k: v.encode("utf-8") for k, v in hidden.odd[env].items()}
        assert unseal(hidden.root, cluster, "apps/odd.yaml") == expected, cluster
        manifest = yaml.safe_load(
            (hidden.root / "rendered" / cluster / "apps/odd.yaml").read_bytes()
        )
        other = next(c for c in CLUSTERS if c != cluster)
        with pytest.raises(seal.SealError):  # and only with that cluster's key
            seal.unseal_manifest(manifest, [keys.rsa_key(CLUSTERS[other])])

    again = run(hidden, "-o", "json", "render", str(hidden.root))
    assert again.returncode == 0
    assert json.loads(again.stdout)["summary"]["filesChanged"] == 0, "odd values hash stably"
    assert_no_value(again)


def test_seal_command_seals_odd_values_byte_for_byte(hidden: Hidden, tmp_path: Path) -> None:
    values = canary.odd_values()
    args = []
    for key, value in values.items():
        path = tmp_path / key
        path.write_bytes(value.encode("utf-8"))
        args += ["--from-file", f"{key}={path}"]
    proc = run(
        hidden,
        "seal",
        "-f",
        str(hidden.root),
        "--selector",
        "env=prod",
        "--namespace",
        "apps",
        "--name",
        "adhoc",
        *args,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert_no_value(proc)
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["metadata"]["annotations"]["secretsync.dev/cluster"] for d in docs] == [
        "h-prod-a",
        "h-prod-b",
    ]
    for doc in docs:
        cluster = doc["metadata"]["annotations"]["secretsync.dev/cluster"]
        opened = seal.unseal_manifest(doc, [keys.rsa_key(CLUSTERS[cluster])])
        assert opened == {k: v.encode("utf-8") for k, v in values.items()}


# --- undecryptable SOPS files ----------------------------------------------------------------


def test_tampered_and_wrong_key_sops_files_fail_only_their_secrets(
    hidden: Hidden, tmp_path: Path
) -> None:
    root = hidden.copy(tmp_path / "fleet")
    before = tree(root)
    mac = root / "sops/prod/tampered.yaml"  # an unencrypted leaf edited: MAC mismatch
    mac.write_text(mac.read_text().replace("note_unencrypted: a", "note_unencrypted: b"))
    cipher = root / "sops/prod/cipher.json"  # one ciphertext character changed
    doc = json.loads(cipher.read_text())
    data = doc["password"]
    at = data.index("data:") + 5
    doc["password"] = data[:at] + ("A" if data[at] != "A" else "B") + data[at + 1 :]
    cipher.write_text(json.dumps(doc))
    (root / "sops/prod/wrongkey.env").write_bytes(
        sops_encrypt(
            f"PASSWORD={canary.new('other-key')}\n".encode(),
            name="sops/prod/wrongkey.env",
            recipient=hidden.other_key.recipient,
        )
    )

    started = time.monotonic()
    proc = run(hidden, "-o", "json", "render", "-v", str(root))
    out, err = text_of(proc)
    assert proc.returncode == 1, err[-2000:]
    assert time.monotonic() - started < 60
    assert_no_value(proc)
    assert failed_objects(proc) == {
        (c, f"apps/{name}") for c in ("h-prod-a", "h-prod-b") for name in PROD_ONLY
    }
    failed = sorted(line for line in err.splitlines() if line.startswith("failed:"))
    assert len(failed) == 6, failed
    for file, reason in (
        ("sops/prod/tampered.yaml", "MAC mismatch"),
        ("sops/prod/cipher.json", "does not decrypt"),
        ("sops/prod/wrongkey.env", "no available key could decrypt"),
    ):
        hits = [line for line in failed if f"sops:{file}" in line]
        assert len(hits) == 2 and all(reason in line for line in hits), (file, failed)
    report = json.loads(out)
    unchanged = {
        (c, i["object"])
        for c, items in report["clusters"].items()
        for i in items
        if i["action"] == "unchanged"
    }
    assert unchanged == {(c, f"apps/{n}") for c in CLUSTERS for n in ("odd", "plain")}
    assert tree(root) == before, "a failed secret keeps its file; nothing else changes"


# --- hostile input ---------------------------------------------------------------------------


def _bomb(root: Path, outside: Path) -> str:
    (root / "secrets/bomb.yaml").write_text(alias_bomb())
    return "secrets/bomb.yaml"


def _huge(root: Path, outside: Path) -> str:
    with (root / "secrets/huge.yaml").open("wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # 64 MiB of NUL bytes: refused before it is read
    return "secrets/huge.yaml"


def _dotdot(root: Path, outside: Path) -> str:
    path = root / "secrets/plain.yaml"
    path.write_text(path.read_text().replace("sops/shared/plain.yaml", "sops/../../outside.yaml"))
    return "secrets/plain.yaml"


def _symlink(root: Path, outside: Path) -> str:
    link = root / "sops/shared/plain.yaml"
    link.unlink()
    link.symlink_to(outside)
    return "secrets/plain.yaml"


HOSTILE: dict[str, tuple[Callable[[Path, Path], str], str]] = {
    "alias-bomb": (_bomb, "alias bomb"),
    "64MiB-file": (_huge, "larger than"),
    "dotdot-path": (_dotdot, "leaves the fleet repo"),
    "symlink-out": (_symlink, "outside the fleet repo"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_is_refused_within_seconds_naming_the_file(
    case: str, hidden: Hidden, tmp_path: Path
) -> None:
    root = hidden.copy(tmp_path / "fleet", register=False)  # 64 MiB: not for the canary scan
    outside = tmp_path / "outside.yaml"
    outside.write_bytes((hidden.root / "sops/shared/plain.yaml").read_bytes())
    make, message = HOSTILE[case]
    named = make(root, outside)
    before = {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}
    try:
        for command in ("validate", "render"):
            started = time.monotonic()
            proc = run(hidden, command, str(root))
            elapsed = time.monotonic() - started
            err = text_of(proc)[1]
            assert proc.returncode == 2, (command, err[-1500:])
            assert named in err and message in err, (command, err[-1500:])
            assert "nothing was changed" in err
            assert elapsed < DEADLINE_S, (command, elapsed)
            assert_no_value(proc)
            after = {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}
            assert after == before, f"{command} wrote into the fleet repo"
    finally:
        shutil.rmtree(root)


# --- sealing certificates --------------------------------------------------------------------


def test_expired_sealing_certificate_is_refused_and_nothing_changes(
    hidden: Hidden, tmp_path: Path
) -> None:
    root = hidden.copy(tmp_path / "fleet")
    before = tree(root)
    past = datetime.now(UTC) - timedelta(days=3)
    (root / "certs/h-prod-a.pem").write_bytes(
        keys.cert_pem(
            keys.rsa_key(CLUSTERS["h-prod-a"]), not_before=past - timedelta(days=30), not_after=past
        )
    )
    proc = run(hidden, "-o", "json", "render", str(root))
    err = text_of(proc)[1]
    assert proc.returncode == 1, err[-2000:]
    assert_no_value(proc)
    assert failed_objects(proc) == {("h-prod-a", f"apps/{n}") for n in ("odd", "plain", *PROD_ONLY)}
    assert "failed: h-prod-a apps/odd: certs/h-prod-a.pem: certificate expired on" in err
    assert tree(root) == before

    proc = run(hidden, "validate", str(root))
    assert proc.returncode == 2
    assert "certs/h-prod-a.pem: certificate expired on" in proc.stderr.decode()

    value = tmp_path / "v"
    value.write_text(canary.new("seal-expired"))
    proc = run(hidden, *seal_args(root, "h-prod-a", value))
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert (
        "failed: cluster h-prod-a: certs/h-prod-a.pem: certificate expired" in proc.stderr.decode()
    )


def test_certificate_swapped_under_a_pin_is_refused_and_nothing_changes(
    hidden: Hidden, tmp_path: Path
) -> None:
    """X4: another valid certificate (a foreign cluster's key) in place of a pinned one."""
    root = hidden.copy(tmp_path / "fleet")
    before = tree(root)
    pinned = seal.certificate_sha256((root / f"certs/{PINNED}.pem").read_bytes(), source="x")
    swapped = keys.cert_pem(keys.rsa_key(43))
    (root / f"certs/{PINNED}.pem").write_bytes(swapped)
    actual = seal.certificate_sha256(swapped, source="x")
    expected = (
        f"clusters/hidden.yaml:12: spec.sealedSecrets.certificateSha256: certs/{PINNED}.pem: "
        f"certificate SHA-256 is {actual}, not the pinned {pinned}"
    )
    value = tmp_path / "v"
    value.write_text(canary.new("seal-swapped"))
    for args in (
        ("validate", str(root)),
        ("render", str(root)),
        ("plan", str(root)),
        seal_args(root, PINNED, value),
    ):
        proc = run(hidden, *args)
        err = proc.stderr.decode()
        assert proc.returncode == 2, (args[0], err[-1500:])
        assert expected in err, (args[0], err[-1500:])
        assert proc.stdout == b""
        assert_no_value(proc)
    assert tree(root) == before

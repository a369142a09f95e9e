"""FIFOs, sockets and devices in a fleet repo, through the real CLI process, with a deadline.

Opening a FIFO for reading blocks until a writer comes: before, a FIFO named like a fleet file
hung `validate` for good. Each is now refused from its `lstat`, without being opened, by
`validate` and `render` (exit 2, the path named) and reported by `scan` (exit 1, the path
named). A device node stands where `/dev/zero` would: never read. `.sops.yaml` is never read
by the sops binary either (it runs with `--config /dev/null`), so a FIFO there cannot stall
every decrypt until its timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fleet"
DEMO_KEYS = REPO / "examples" / "demo-keys"
DEADLINE_S = 10.0  # per process, interpreter start included; a refusal itself takes ~ms

# (path in the example fleet, what the error names): each is read by `validate`
PLACES = {
    "fleet-file": ("secretsync.yaml", "secretsync.yaml"),
    "cluster-file": ("clusters/extra.yaml", "clusters/extra.yaml"),
    "secret-file": ("secrets/payments/extra.yaml", "secrets/payments/extra.yaml"),
    "cert-file": ("certs/prod-use1.pem", "certs/prod-use1.pem"),
    "sops-file": ("sops/shared/registry.json", "sops/shared/registry.json"),
    "templated-sops-file": ("sops/prod/monitoring.env", "sops/prod/monitoring.env"),
}


@contextlib.contextmanager
def special_file(path: Path, kind: str) -> Iterator[None]:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
        yield
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
            yield
    else:  # the /dev/zero device (tests run as root)
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
        yield


def run(*args: str) -> tuple[int, str, float]:
    env = {
        **os.environ,
        "SOPS_AGE_KEY_FILE": str(DEMO_KEYS / "age.key"),
        "SECRETSYNC_HMAC_KEY": "special-files-key",
        "VAULT_TOKEN": "unused",
    }
    started = time.monotonic()
    proc = cli.run(*args, env=env, timeout=DEADLINE_S * 3)
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return proc.returncode, out, time.monotonic() - started


CASES = [(place, "fifo") for place in sorted(PLACES)] + [
    ("cluster-file", "socket"),
    ("cert-file", "socket"),
    ("cluster-file", "device"),
    ("cert-file", "device"),
]


@pytest.mark.parametrize(("place", "kind"), CASES)
def test_special_file_is_refused_promptly_naming_its_path(
    place: str, kind: str, tmp_path: Path
) -> None:
    root = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, root, symlinks=True)
    shutil.rmtree(root / "rendered")
    relative, named = PLACES[place]
    with special_file(root / relative, kind):
        for command in ("validate", "render"):
            code, out, elapsed = run(command, str(root))
            assert code == 2, (command, code, out[-1500:])
            assert named in out and "not a regular file" in out, (command, out[-1500:])
            assert elapsed < DEADLINE_S, (command, elapsed)
        assert not (root / "rendered").exists()
        code, out, elapsed = run("scan", str(root))
    assert elapsed < DEADLINE_S, elapsed
    if relative.endswith(".pem"):
        assert code == 0, out  # not a name scan reads: left alone, never opened
    else:
        assert code == 1, out
        assert f"{relative}:1: not-a-regular-file" in out, out


def test_scan_names_fifos_sockets_and_broken_yaml_and_returns_promptly(tmp_path: Path) -> None:
    (tmp_path / "k8s").mkdir()
    os.mkfifo(tmp_path / "k8s" / "secret.yaml")
    os.mkfifo(tmp_path / "values.sops.env")
    os.mkfifo(tmp_path / "notes.txt")  # not a file scan would read: not reported
    (tmp_path / "broken.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData:\n"
        "  password: not-a-real-one\n  extra: [\n"
    )
    (tmp_path / "chart.yaml").write_text(  # a Helm template is YAML only once rendered
        '{{- if .Values.x }}\napiVersion: v1\nkind: Secret\nstringData: {a: "{{ .Values.a }}"}\n'
        "{{- end }}\n"
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "k8s" / "agent.json"))
        code, out, elapsed = run("scan", str(tmp_path))
    assert elapsed < DEADLINE_S
    assert code == 1, out
    lines = sorted(  # files are named under the folder as it was given
        line.removeprefix(f"{tmp_path}/")
        for line in out.splitlines()
        if ": " in line and "finding" not in line
    )
    assert lines == [
        "broken.yaml:6: unparsable-file: is not valid YAML from this line on: not checked, "
        "and a broken file may still hold a plaintext Secret",
        "k8s/agent.json:1: not-a-regular-file: is a socket: not opened, not checked",
        "k8s/secret.yaml:1: not-a-regular-file: is a FIFO: not opened, not checked",
        "values.sops.env:1: not-a-regular-file: is a FIFO: not opened, not checked",
    ]
    assert "not-a-real-one" not in out


def test_a_fifo_sops_config_does_not_stall_decryption(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, root, symlinks=True)
    os.mkfifo(root / ".sops.yaml")  # sops looks for its config from its working folder up
    code, out, elapsed = run("render", str(root))
    assert code == 0, out[-1500:]
    assert elapsed < DEADLINE_S, elapsed

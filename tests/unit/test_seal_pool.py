"""Sealing on worker processes gives what sealing in-process gives: values that open with the
cluster's key (and only in their place), the same hashes, the same kept ciphertexts; a broken
pool seals in this process instead."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from secretsync.core import errors
from secretsync.delivery import seal, sealpool
from secretsync.engine.report import CycleReport
from secretsync.sinks.git.sink import GitSink
from tests.support import canary, cycles, fleets, keys

MakeRepo = Callable[[dict[str, str | bytes]], Path]
KEY = b"test-hmac-key-0123456789abcdef"


def run(root: Path, docs: dict[str, dict[str, object]], **kw: Any) -> CycleReport:
    sink = GitSink(out_dir=root / "rendered", index=False)
    return cycles.render(root, docs, sink=sink, key=KEY, check=True, **kw)[0]


def key_of(cluster: str) -> RSAPrivateKey:
    key = fleets.private_key_for(cluster)
    assert isinstance(key, RSAPrivateKey)
    return key


def docs_of(root: Path) -> dict[str, dict[str, Any]]:
    out = root / "rendered"
    return {
        str(p.relative_to(out)): yaml.safe_load(p.read_text())
        for p in sorted(out.rglob("*.yaml"))
        if p.name != "kustomization.yaml"
    }


def test_pool_seals_what_this_process_seals(fleet_repo: MakeRepo) -> None:
    docs = fleets.vault_docs()
    pooled = fleets.write_fleet(fleet_repo)
    inline = fleets.write_fleet(fleet_repo)
    a = run(pooled, docs, seal_workers=2, pool_threshold=1)
    b = run(inline, docs, seal_workers=0)
    assert a.seals == b.seals > 0
    got, want = docs_of(pooled), docs_of(inline)
    assert got.keys() == want.keys()
    values = {v for doc in docs.values() for v in doc.values() if isinstance(v, str)}
    for rel, doc in got.items():
        if doc["kind"] != "SealedSecret":
            assert doc == want[rel]
            continue
        assert doc["metadata"] == want[rel]["metadata"], "same content and key hashes"
        cluster = rel.split("/")[0]
        opened = seal.unseal_manifest(doc, [key_of(cluster)])
        assert opened == seal.unseal_manifest(want[rel], [key_of(cluster)])
        assert values & {v.decode() for v in opened.values()}
        other = next(c for c in fleets.SEALED if c != cluster)
        with pytest.raises(errors.SealError):
            seal.unseal_manifest(doc, [key_of(other)])


def test_pool_keeps_the_ciphertext_of_unchanged_keys(fleet_repo: MakeRepo) -> None:
    root = fleets.write_fleet(fleet_repo)
    docs = fleets.vault_docs()
    run(root, docs, seal_workers=2, pool_threshold=1)
    before = docs_of(root)
    docs["payments/prod/db"] = {**docs["payments/prod/db"], "password": canary.new("pw-rot")}
    report = run(root, docs, seal_workers=2, pool_threshold=1)
    after = docs_of(root)
    changed = {rel for rel in after if after[rel] != before[rel]}
    assert changed == {"prod-use1/payments/db-credentials.yaml"}
    old = before["prod-use1/payments/db-credentials.yaml"]["spec"]["encryptedData"]
    new = after["prod-use1/payments/db-credentials.yaml"]["spec"]["encryptedData"]
    assert [k for k in new if new[k] != old[k]] == ["password"]
    assert report.seals == 1


def test_pool_answers_in_order_across_chunks() -> None:
    key = keys.rsa_key(0)
    n = sealpool.CHUNK * 2 + 5
    jobs = [(f"ns/name{i}".encode(), f"value-{i}".encode()) for i in range(n)]
    pool = sealpool.SealPool(2, threshold=1)
    try:
        chunks = list(pool.seal(key.public_key(), jobs))
    finally:
        pool.close()
    assert [len(c) for c in chunks] == [sealpool.CHUNK, sealpool.CHUNK, 5]
    sealed = [s for c in chunks for s in c]
    for (label, plaintext), ciphertext in zip(jobs, sealed, strict=True):
        assert seal.unseal_value([key], ciphertext, label=label) == plaintext


def test_a_worker_that_dies_leaves_the_sealing_to_this_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = keys.rsa_key(1)
    jobs = [(f"ns/n{i}".encode(), f"value-{i}".encode()) for i in range(sealpool.CHUNK * 3)]
    pool = sealpool.SealPool(2, threshold=1)
    try:
        list(pool.seal(key.public_key(), jobs[:1]))  # the workers run
        pool._procs[0].proc.kill()
        pool._procs[0].proc.wait()
        with caplog.at_level(logging.WARNING, logger="secretsync.delivery.sealpool"):
            sealed = [s for chunk in pool.seal(key.public_key(), jobs) for s in chunk]
    finally:
        pool.close()
    opened = [
        seal.unseal_value([key], c, label=lbl) for (lbl, _), c in zip(jobs, sealed, strict=True)
    ]
    assert opened == [v for _, v in jobs]
    assert not pool.usable and not pool.worth(10_000)
    assert "sealing in this process" in caplog.text


def test_an_answer_is_never_used_for_another_request() -> None:
    """A caller that stops half way (an error, a timeout) leaves answers in flight: the next
    request must never get them."""
    key = keys.rsa_key(2)
    first = [(b"ns/first", f"first-{i}".encode()) for i in range(sealpool.CHUNK * 4)]
    second = [(b"ns/second", f"second-{i}".encode()) for i in range(sealpool.CHUNK * 2)]
    pool = sealpool.SealPool(2, threshold=1)
    try:
        stream = pool.seal(key.public_key(), first)
        next(stream)
        stream.close()  # three chunks in flight, never taken
        sealed = [s for chunk in pool.seal(key.public_key(), second) for s in chunk]
    finally:
        pool.close()
    assert [seal.unseal_value([key], c, label=b"ns/second") for c in sealed] == [
        v for _, v in second
    ]


def test_workers_do_not_run_the_callers_main_module(tmp_path: Path) -> None:
    """No `if __name__ == "__main__"` guard: a multiprocessing child would run this again."""
    marker = tmp_path / "runs"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(sealpool.__file__).parents[2])!r})\n"
        f"open({str(marker)!r}, 'a').write('run\\n')\n"
        "from cryptography.hazmat.primitives.asymmetric import rsa\n"
        "from secretsync.delivery import sealpool\n"
        "key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()\n"
        "pool = sealpool.SealPool(2, threshold=1)\n"
        "out = [s for c in pool.seal(key, [(b'l', b'v')] * 200) for s in c]\n"
        "pool.close()\n"
        "assert len(out) == 200 and pool.usable\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert marker.read_text() == "run\n"


def test_frames_round_trip() -> None:
    jobs = [(b"", b""), (b"ns/name", bytes(range(256))), (b"x" * 300, b"\n" * 70_000)]
    assert sealpool.decode_request(sealpool.encode_request(7, b"der", jobs)) == (7, b"der", jobs)
    assert sealpool.decode_answer(sealpool.encode_answer(9, ["a", "", "b" * 900])) == (
        9,
        ["a", "", "b" * 900],
    )
    with pytest.raises(ValueError, match="malformed"):
        sealpool.decode_request(sealpool.encode_request(7, b"der", jobs) + b"x")


def test_few_seals_stay_in_this_process() -> None:
    pool = sealpool.SealPool(2, threshold=256)
    assert not pool.worth(255) and pool.worth(256)
    assert not sealpool.SealPool(0).worth(10_000)

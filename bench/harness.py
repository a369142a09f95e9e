"""What every benchmark needs around the thing it measures.

- the machine block of a results document (cpus, cpu model, Python, date);
- a process's resources: peak and current RSS (VmHWM / VmRSS), CPU seconds from /proc;
- a measurement in a child process (`run_child`), so its peak RSS and CPU are its own;
- fixtures: self-signed sealing certificates, and KV v2 secrets written to OpenBao with 32
  requests in flight.

Nothing here measures secretsync itself; the benchmark scripts do.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
JSONDoc = dict[str, Any]


# --- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(**extra: object) -> JSONDoc:
    """The `machine` block: cpus, cpu_model, python, date (ISO 8601, UTC), plus `extra`."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


# --- process resources ------------------------------------------------------------------------


def proc_status_kib(pid: int | str, field: str) -> int:
    """A `/proc/<pid>/status` field in KiB (`VmHWM:`, `VmRSS:`), or a count (`Threads:`)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def peak_rss_mib(pid: int | str = "self") -> float:
    """The high-water mark of resident memory (VmHWM) in MiB."""
    kib = proc_status_kib(pid, "VmHWM:")
    if kib == 0 and pid == "self":
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def rss_mib(pid: int | str = "self") -> float:
    return proc_status_kib(pid, "VmRSS:") / 1024


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (its threads included)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # after "pid (comm)": field 3 is index 0, so utime (14) is index 11, stime (15) index 12
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_s(ident: int | None) -> float:
    """CPU seconds of one thread of this process (0.0 if it is gone)."""
    if ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, ProcessLookupError):
        return 0.0


def emit(doc: JSONDoc, path: Path | None) -> None:
    """Print a results document, and write it to `path` too when one is given."""
    text = json.dumps(doc, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n")


async def close_any(resource_owner: object) -> None:
    """Close a sink, source or client whether it offers `aclose()` or a plain `close()`."""
    aclose = getattr(resource_owner, "aclose", None)
    if aclose is not None:
        await aclose()
        return
    close = getattr(resource_owner, "close", None)
    if close is not None:
        outcome = close()
        if inspect.isawaitable(outcome):
            await outcome


# --- a measurement in its own process ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildRun:
    """What a child process reported (its JSON document) and what the kernel saw of it."""

    doc: JSONDoc
    wall_s: float
    cpu_s: float  # user + system, from wait4
    max_rss_mib: float  # ru_maxrss, from wait4


def run_child(
    argv: Sequence[str],
    *,
    out: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 3600.0,
) -> ChildRun:
    """Run `argv` (which must write one JSON document to `out`) and wait for it.

    The child's own CPU time and peak RSS come from `wait4`, so nothing the parent does (a
    proxy, simulated servers, a baseline) is counted in them. A child that fails raises with
    the tail of its output.
    """
    out.unlink(missing_ok=True)
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = started + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{argv[1] if len(argv) > 1 else argv[0]} failed ({status}):\n{tail}")
    return ChildRun(
        doc=json.loads(out.read_text()),
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_mib=usage.ru_maxrss / 1024,
    )


def python_argv(script: Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *args]


# --- fixtures ---------------------------------------------------------------------------------


def sealing_keys(count: int, *, bits: int = 4096) -> list[tuple[rsa.RSAPrivateKey, bytes]]:
    """`count` RSA key pairs with their certificates (sealed-secrets uses RSA-4096)."""
    from tests.support.keys import cert_pem  # the repo root is on the path of every bench script

    keys = [rsa.generate_private_key(public_exponent=65537, key_size=bits) for _ in range(count)]
    return [(k, cert_pem(k)) for k in keys]  # self-signed, as the controller's are


async def write_kv(
    address: str,
    token: str,
    *,
    mount: str,
    secrets: Iterable[tuple[str, Mapping[str, str]]],
    in_flight: int = 32,
) -> int:
    """Write KV v2 secrets (path, data) with `in_flight` requests at a time; returns the count."""
    gate = asyncio.Semaphore(in_flight)
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(
        headers={"X-Vault-Token": token}, connector=connector
    ) as session:

        async def write(path: str, data: Mapping[str, str]) -> None:
            async with gate:
                url = f"{address}/v1/{mount}/data/{path}"
                async with session.post(url, json={"data": dict(data)}) as response:
                    response.raise_for_status()

        jobs = [write(path, data) for path, data in secrets]
        await asyncio.gather(*jobs)
    return len(jobs)


def raw_oaep_us(key: rsa.RSAPublicKey, n: int) -> float:
    """µs per raw RSA-OAEP (SHA-256) encryption of a 32-byte key with `key`: the physical cost
    under every seal."""
    pad = padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"ns/name"
    )
    data = os.urandom(32)
    t0 = time.perf_counter()
    for _ in range(n):
        key.encrypt(data, pad)
    return (time.perf_counter() - t0) / n * 1e6

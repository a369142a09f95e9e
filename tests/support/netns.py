"""A test host in a network namespace of our own, reachable from the host over a veth pair.

kube-apiserver refuses to proxy to loopback addresses, so a service-proxy test needs its
backend on another address: this makes one, private to the test run, and removes it after.

    with network_host() as host:              # host.ip, e.g. 10.231.7.2
        host.serve_directory(folder, port=8080)
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class TestHost:
    namespace: str
    ip: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def serve_directory(self, folder: Path, *, port: int) -> None:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.namespace,
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                self.ip,
                "--directory",
                str(folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(proc)
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.ip}:{port}/", timeout=1):
                    return
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("test host server did not start") from None
                time.sleep(0.1)


@contextlib.contextmanager
def network_host() -> Iterator[TestHost]:
    tag = secrets.token_hex(3)
    ns, outer, inner = f"ss-{tag}", f"vs{tag}a", f"vs{tag}b"
    subnet = int(tag, 16) % 250 + 1
    host_ip, peer_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    _ip("netns", "add", ns)
    host = TestHost(ns, peer_ip)
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", ns, "addr", "add", f"{peer_ip}/30", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield host
    finally:
        for proc in host.processes:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", outer)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", ns)

"""A test-side client of a `secretsync serve` process this test started: HTTP requests to its
127.0.0.1 port (every answer kept for the canary scan), signed webhooks, deadline waits."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secretsync.daemon import webhook
from tests.support import canary

_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class ServeClient:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        log: Path,
        key: bytes,
        *,
        base: str = "",
        poll_s: float = 0.05,
    ) -> None:
        self.proc, self.log, self.key, self.base, self.poll_s = proc, log, key, base, poll_s
        self.seen: list[str] = []

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, *, timeout: float, since: int = 0) -> None:
        """Wait for the process to log its address (after `since` characters of its log) and
        aim every request there; fail the test at the deadline or if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            found = _LISTENING.search(self.log_text()[since:])
            if found:
                self.base = f"http://127.0.0.1:{found.group(1)}"
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"serve did not start:\n{self.log_text()[-3000:]}")
            time.sleep(self.poll_s)  # poll interval under the deadline above

    def request(
        self, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        # the base is always http://127.0.0.1:<port> of the process this test started
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        self.seen.append(canary.keep(f"serve {path}", text))
        return status, text

    def status(self) -> dict[str, Any]:
        code, text = self.request("/v1/status")
        assert code == 200, text
        document = json.loads(text)
        assert isinstance(document, dict)
        return document

    def cycles(self) -> int:
        return int(self.status()["cycles"])

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> float:
        """Poll `predicate` until true; return when it became true (monotonic)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log:\n{self.log_text()}")
            assert self.proc.poll() is None, f"serve exited early:\n{self.log_text()}"
            time.sleep(self.poll_s)  # poll interval under the deadline above
        return time.monotonic()

    def post(
        self, body: bytes, *, key: bytes | None = None, ts: int | None = None, signed: bool = True
    ) -> int:
        """POST a rotation webhook, signed the Standard Webhooks way unless `signed=False`."""
        headers = {"Content-Type": "application/json"}
        if signed:
            msg_id = f"msg_{uuid.uuid4().hex}"
            stamp = int(time.time()) if ts is None else ts
            headers |= {
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": webhook.sign(key or self.key, msg_id, stamp, body),
            }
        return self.request("/v1/webhooks/vault", body=body, headers=headers)[0]

"""Verification of signed rotation webhooks (Standard Webhooks) and of their body. Pure: no I/O.

A request carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`:
one or more space-separated `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<raw body>">`. The
key comes from `SECRETSYNC_WEBHOOK_SECRET`: base64 with an optional `whsec_` prefix.

`Verifier.verify` checks, in this order, and raises `WebhookError` (never anything else):
headers present and well-formed (401), timestamp within the tolerance (401), one signature
matching in constant time (401); then the body: UTF-8 JSON `{"paths": [...]}`, optionally
with the Vault source the paths are in (`{"source": "eu", "paths": [...]}`; none or `default`:
the default source), nothing else (400). An id seen within the tolerance window is reported
as a replay: acknowledged, no work. The body is never logged or put in an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

SECRET_PREFIX: Final = "whsec_"
TOLERANCE_S: Final = 300
MAX_BODY_BYTES: Final = 64 * 1024
MAX_PATHS: Final = 256
MAX_PATH_CHARS: Final = 512
MAX_ID_CHARS: Final = 256
MAX_SEEN_IDS: Final = 100_000
_SOURCE_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class WebhookError(Exception):
    """A refused webhook. `status` is the HTTP status to answer; the message names no data."""

    status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(WebhookError):
    status = 401


class BadBody(WebhookError):
    status = 400


class TooLarge(WebhookError):
    status = 413


def parse_secret(text: str) -> bytes:
    """The signing key, read as the Standard Webhooks libraries read it: base64, after an
    optional `whsec_` prefix, padded or not. Raises ValueError (naming no part of the secret)
    when it is not base64 or is empty. Unlike those libraries, characters outside the base64
    alphabet are refused rather than skipped, so a mistyped secret stops `serve` at start."""
    encoded = text.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(
            "SECRETSYNC_WEBHOOK_SECRET is not base64 (with or without the whsec_ prefix, "
            "it is read as base64 like the Standard Webhooks libraries read it)"
        ) from None
    if not key:
        raise ValueError("SECRETSYNC_WEBHOOK_SECRET is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The `webhook-signature` value for a request (used by senders and by the tests)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified request: its id, the paths it names (normalised), and whether it is a replay."""

    msg_id: str
    paths: tuple[str, ...]
    replay: bool = False


class Verifier:
    """Checks signatures and remembers recent ids (bounded, for the tolerance window)."""

    def __init__(
        self,
        *,
        key: bytes,
        tolerance_s: float = TOLERANCE_S,
        max_seen: int = MAX_SEEN_IDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._tolerance_s = tolerance_s
        self._max_seen = max_seen
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"Verifier(tolerance_s={self._tolerance_s}, seen={len(self._seen)})"

    def verify(self, headers: Mapping[str, str], body: bytes) -> Verified:
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signatures = headers.get("webhook-signature", "")
        if not msg_id or not stamp or not signatures:
            raise Unauthorized("missing webhook-id, webhook-timestamp or webhook-signature")
        if len(msg_id) > MAX_ID_CHARS or not msg_id.isascii() or not msg_id.isprintable():
            raise Unauthorized("malformed webhook-id")
        if len(stamp) > 12 or not stamp.isascii() or not stamp.isdigit():
            raise Unauthorized("malformed webhook-timestamp")
        now = self._clock()
        if abs(now - int(stamp)) > self._tolerance_s:
            raise Unauthorized("webhook-timestamp is too far from now")
        expected = hmac.new(
            self._key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256
        ).digest()
        if not any(hmac.compare_digest(expected, c) for c in _candidates(signatures)):
            raise Unauthorized("no valid signature")
        self._forget(now)
        if msg_id in self._seen:
            return Verified(msg_id, (), replay=True)
        self._seen[msg_id] = now
        while len(self._seen) > self._max_seen:
            self._seen.popitem(last=False)
        return Verified(msg_id, parse_paths(body))

    def _forget(self, now: float) -> None:
        horizon = now - 2 * self._tolerance_s
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at >= horizon:
                break
            del self._seen[oldest]


def _candidates(header: str) -> list[bytes]:
    out: list[bytes] = []
    for part in header.split(" ")[:16]:
        version, sep, value = part.partition(",")
        if version != "v1" or not sep or not value.isascii():
            continue
        try:
            out.append(base64.b64decode(value, validate=True))
        except binascii.Error:
            continue
    return out


def parse_paths(body: bytes) -> tuple[str, ...]:
    """`{"paths": ["<mount>/<path>", ...]}` → the normalised paths, deduplicated, in order;
    with `"source": "<name>"` each is named `<name>:<mount>/<path>`, as the engine names the
    paths of a named Vault source (`default` is the default source: no prefix).

    Strict: a JSON object with the key `paths` and at most `source` beside it (a DNS label), a
    non-empty list of at most MAX_PATHS strings, each at most MAX_PATH_CHARS characters of
    printable text, made of non-empty segments (no `.` nor `..`, no backslash). Raises BadBody.
    """
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadBody("body is not UTF-8 JSON") from None
    if not isinstance(doc, dict) or set(doc) not in ({"paths"}, {"source", "paths"}):
        raise BadBody(
            'body must be a JSON object with the key "paths" and at most "source" beside it'
        )
    source = doc.get("source", "default")
    if not isinstance(source, str) or not _SOURCE_NAME.fullmatch(source):
        raise BadBody('"source" must be the name of a source (a DNS label)')
    prefix = "" if source == "default" else f"{source}:"
    paths = doc["paths"]
    if not isinstance(paths, list) or not paths:
        raise BadBody('"paths" must be a non-empty list')
    if len(paths) > MAX_PATHS:
        raise BadBody(f'"paths" holds more than {MAX_PATHS} entries')
    out: dict[str, None] = {}
    for i, path in enumerate(paths):
        out[prefix + normalise(path, index=i)] = None
    return tuple(out)


def normalise(path: object, *, index: int = 0) -> str:
    """One webhook path, checked: leading and trailing slashes dropped. Raises BadBody."""
    where = f'"paths"[{index}]'
    if not isinstance(path, str):
        raise BadBody(f"{where} is not a string")
    if len(path) > MAX_PATH_CHARS:
        raise BadBody(f"{where} is longer than {MAX_PATH_CHARS} characters")
    if not path.isprintable() or "\\" in path:
        raise BadBody(f"{where} holds control characters or a backslash")
    segments = path.strip("/").split("/")
    if len(segments) < 2 or any(s in ("", ".", "..") for s in segments):
        raise BadBody(f"{where} must be <mount>/<path> with no empty, '.' or '..' segments")
    return "/".join(segments)

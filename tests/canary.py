"""Unique canary secret values, remembered for the session-wide leak scan in conftest.py.

Every secret value a test feeds to secretsync comes from `new()`. After the session, the scan
looks for each canary (raw, base64 and JSON-escaped) in every log record of the session and
in every file under every fleet repo the tests created.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

ISSUED: list[str] = []
FLEET_REPOS: list[Path] = []


def new(label: str = "v") -> str:
    value = f"canary-{label}-{uuid.uuid4().hex}"
    ISSUED.append(value)
    return value


def remember(value: str) -> str:
    """Register a value a test builds itself (odd characters, unicode) as a canary."""
    if len(value.encode()) >= 4:
        ISSUED.append(value)
    return value


def forms(value: str) -> list[str]:
    raw = value.encode("utf-8")
    out = [value, base64.b64encode(raw).decode("ascii")]
    escaped = json.dumps(value)[1:-1]
    if escaped != value:
        out.append(escaped)
    return out


def find_in_text(text: str) -> list[str]:
    return [v for v in ISSUED for f in forms(v) if f in text]

"""Unique canary secret values, remembered for the session-wide leak scan in conftest.py.

Every secret value a test feeds to secretsync comes from `new()`. After the session, the scan
looks for each canary (raw, base64 and JSON-escaped) in every log record of the session, in
every file under every fleet repo the tests created, in every HTTP answer of a `serve` process
(`tests/support/served.py`) and in the metrics text of every `Metrics` made in the test process.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

ISSUED: list[str] = []
FLEET_REPOS: list[Path] = []
OUTPUTS: list[tuple[str, str]] = []
"""(where, text) of what secretsync served or printed (HTTP answers of a running `serve`,
metrics); scanned after the session like the log records."""


def keep(where: str, text: str) -> str:
    """Remember output for the session scan; returns it unchanged."""
    OUTPUTS.append((where, text))
    return text


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


def odd_values() -> dict[str, str]:
    """Values that break naive YAML, JSON, shell or template handling, each unique and
    registered as a canary: newlines, CRLF, quotes, document breaks, bidi and zero-width
    characters, control characters (no NUL), surrounding spaces, template syntax."""
    u = uuid.uuid4().hex
    values = {
        "spaces": f"  surrounded by spaces {u}  ",
        "newlines": f"line one {u}\nline two\n\nline four\n",
        "document-break": f"---\napiVersion: v1\nkind: Secret\nmetadata: {{name: evil-{u}}}\n---\n",
        "quotes": f"single ' double \" back ` slash \\ {u} \\n literal",
        "unicode": f"ünïcødé 🚀 日本語 \u202ertl\u202c zero\u200bwidth {u}",
        "yaml-syntax": f"key: value\n- item: &a *a\n? {{[}}]\n# comment {u}",
        "template": f"{{{{ cluster.name }}}} {{% raw %}} ${{HOME}} {u}",
        "crlf-tab": f"\tcr\r\nlf\r{u}\t",
        "only-space-ends": f" {u}",
        "json": json.dumps({"password": u, "nested": [1, None, True]}),
        "control": f"\x01\x02\x1b[31mred\x1b[0m\x7f\x08 {u}",
        "bom-nbsp": f"\ufeff\u00a0{u}\u00a0",
        "isolates": f"\u2066{u}\u2069\u2067\u200f",
        "sops-lookalike": f"ENC[AES256_GCM,data:{u},iv:x,tag:y,type:str]",
    }
    for v in values.values():
        remember(v)
    return values

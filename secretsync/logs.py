"""Logging setup: text or JSON lines on stderr, third-party loggers pinned, values redacted.

`SecretValue` already prints as `<secret>`; the redaction filter is the second line: every
value resolved in this process is registered with `protect()`, and any log record whose text
contains one (raw, base64 or JSON-escaped) has it replaced before it is written.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

from secretsync.values import SecretValue

NOISY: Final = ("kubernetes", "urllib3", "hvac", "aiohttp.access", "asyncio", "requests")
REDACTED: Final = "<redacted>"

_needles: set[str] = set()
_lock = threading.Lock()


def protect(values: Iterable[SecretValue]) -> None:
    """Register values the redaction filter must never let through."""
    fresh = set()
    for value in values:
        for needle in value.needles():
            try:
                fresh.add(needle.decode("utf-8"))
            except UnicodeDecodeError:
                continue
    with _lock:
        _needles.update(fresh)


def redact(text: str) -> str:
    with _lock:
        needles = [n for n in _needles if n in text]
    for needle in sorted(needles, key=len, reverse=True):
        text = text.replace(needle, REDACTED)
    return text


class RedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _needles:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("cluster", "fleet_secret", "source", "count"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False)


def setup(*, level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactionFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)

"""Logging setup: text or JSON lines on stderr, third-party loggers pinned, values redacted.

`SecretValue` already prints as `<secret>`; the redaction filter is the second line: every
value is registered with `protect()` as it is resolved (by `resolve`), and any log record whose
text contains one (raw, base64 or JSON-escaped) has it replaced before the handler writes it,
whichever logger made the record (ours or a library's). The registry holds one value per ref,
so a rotation replaces the old value, and `retain()` forgets the refs no longer in the fleet:
a long-running daemon holds as many values as its fleet uses, never more.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import threading
from collections.abc import Hashable, Iterable, Set
from datetime import UTC, datetime
from typing import Final

from secretsync.core.values import SecretValue

NOISY: Final = ("kubernetes", "urllib3", "hvac", "aiohttp.access", "asyncio", "requests")
REDACTED: Final = "<redacted>"
_WORDS: Final = (4, 2)
"""Sizes of the machine words a text's UTF-8 bytes are read as: 4 bytes, and 2 bytes for short
needles (a raw value of 4 to 6 bytes)."""
if struct.calcsize("I") != 4 or struct.calcsize("H") != 2:
    raise ImportError("secretsync.core.logs needs 4-byte 'I' and 2-byte 'H' machine words")


def _words(data: memoryview, size: int) -> memoryview[int]:
    """`data` as aligned words of `size` bytes (native order), without copying."""
    whole = data[: len(data) - len(data) % size]
    return whole.cast("I") if size == 4 else whole.cast("H")


class _Needles:
    """Every needle of the registered values, indexed so that a text is checked without one
    substring search per needle (with 10,000 values registered, that would cost a millisecond
    a record), in time that does not grow with the number of values.

    A text's UTF-8 bytes are read as aligned 4-byte words (bytes 0-3, 4-7 ...) by C code, and
    the words are looked up in the index in one set operation. An occurrence of a needle of 7
    bytes or more covers such a word wherever it starts; more precisely, any 7 consecutive
    bytes of the needle hold, at one of their first four offsets, the word that an occurrence
    covers there. So each needle is indexed under the four words starting in its middle 7 bytes
    (the middle: many tokens share a prefix, such as `sk_live_` or `ghp_`, which would make
    them share index entries). Needles of 4 to 6 bytes are indexed the same way by 2-byte
    words. Only the needles under a word of the text are searched for; a word holds one needle
    as a `str`, several as a tuple (a set per word would triple the memory)."""

    __slots__ = ("words",)

    def __init__(self, needles: Iterable[str]) -> None:
        self.words: tuple[dict[int, str | tuple[str, ...]], ...] = ({}, {})
        for needle in set(needles):
            raw = needle.encode("utf-8")
            which, size = (0, 4) if len(raw) >= 7 else (1, 2)
            start = (len(raw) - (2 * size - 1)) // 2
            words = self.words[which]
            for offset in range(start, start + size):
                word = int.from_bytes(raw[offset : offset + size], sys.byteorder)
                held = words.get(word)
                if held is None:
                    words[word] = needle
                elif held != needle:
                    words[word] = (held, needle) if isinstance(held, str) else (*held, needle)

    def redact(self, text: str) -> str:
        data = memoryview(text.encode("utf-8", "replace"))
        found: set[str] = set()
        for size, words in zip(_WORDS, self.words, strict=True):
            if not words:
                continue
            chunks = _words(data, size)
            if words.keys().isdisjoint(chunks):
                continue
            for word in chunks:
                held = words.get(word)
                if held is not None:
                    found.update((held,) if isinstance(held, str) else held)
        for needle in sorted(found, key=len, reverse=True):  # the longest match wins
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text


def _forms(value: SecretValue) -> tuple[str, ...]:
    out = []
    for needle in value.needles():
        try:
            out.append(needle.decode("utf-8"))
        except UnicodeDecodeError:
            continue  # bytes that are not text cannot appear in a log line as such
    return tuple(out)


class _Registry:
    """The values to redact, one per ref; the needle index is rebuilt on the first record
    after a change (a cycle registers its values in one call, so about once per cycle)."""

    def __repr__(self) -> str:
        return f"<redaction registry: {len(self.by_ref)} refs>"  # never the values

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_ref: dict[Hashable, tuple[str, ...]] = {}
        self.index: _Needles | None = None

    def protect(self, values: Iterable[tuple[Hashable, SecretValue]]) -> None:
        fresh = {ref: _forms(value) for ref, value in values}
        with self.lock:
            for ref, forms in fresh.items():
                if self.by_ref.get(ref) != forms:
                    self.by_ref[ref] = forms
                    self.index = None

    def retain(self, refs: Set[Hashable]) -> None:
        with self.lock:
            gone = [ref for ref in self.by_ref if ref not in refs]
            for ref in gone:
                del self.by_ref[ref]
            if gone:
                self.index = None

    def needles(self) -> _Needles:
        with self.lock:
            if self.index is None:
                self.index = _Needles(n for forms in self.by_ref.values() for n in forms)
            return self.index


_REGISTRY = _Registry()


def protect(values: Iterable[tuple[Hashable, SecretValue]]) -> None:
    """Register values the redaction filter must never let through, each under the ref it
    was resolved for (a later value for the same ref replaces it)."""
    _REGISTRY.protect(values)


def retain(refs: Set[Hashable]) -> None:
    """Forget the values of every ref not in `refs` (those of objects no longer in the fleet)."""
    _REGISTRY.retain(refs)


def redact(text: str) -> str:
    return _REGISTRY.needles().redact(text)


class RedactionFilter(logging.Filter):
    """Attached to the handler: every record it writes, from any logger, is redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _REGISTRY.by_ref:
            return True
        index = _REGISTRY.needles()
        message = record.getMessage()
        cleaned = index.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # formatted here, as the handler's formatter would, so that it can be redacted
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = index.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = index.redact(record.stack_info)
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

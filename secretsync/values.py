"""Secret values and the keyed content hash.

A `SecretValue` holds plaintext bytes and refuses to show them: its repr and str are masked,
so a value that slips into a log line or an f-string prints as `<secret>`. Code that must use
the bytes calls `reveal()`, and only the renderers and sinks do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Final

MIN_GUARDED_LEN: Final = 4
"""Values shorter than this are too common to guard against (DESIGN §3)."""


class SecretValue:
    """Plaintext bytes with a masked representation."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    @classmethod
    def of(cls, text: str) -> SecretValue:
        return cls(text.encode("utf-8"))

    def reveal(self) -> bytes:
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self._data, other._data)

    def __hash__(self) -> int:
        return hash(self._data)

    def needles(self) -> tuple[bytes, ...]:
        """The byte strings whose presence in output would leak this value."""
        if len(self._data) < MIN_GUARDED_LEN:
            return ()
        out = [self._data, base64.b64encode(self._data)]
        try:
            escaped = json.dumps(self._data.decode("utf-8"))[1:-1].encode("utf-8")
        except UnicodeDecodeError:
            escaped = self._data
        if escaped != self._data:
            out.append(escaped)
        return tuple(out)


def content_hash(key: bytes, parts: Mapping[str, object]) -> str:
    """Keyed HMAC-SHA256 over a canonical JSON of `parts` (values as SecretValue or plain)."""

    def encode(obj: object) -> object:
        kind = type(obj)
        if kind is str or kind is int or kind is bool or obj is None:
            return obj
        if kind is SecretValue:
            return {"$b": base64.b64encode(obj.reveal()).decode("ascii")}  # type: ignore[attr-defined]
        if isinstance(obj, bytes):
            return {"$b": base64.b64encode(obj).decode("ascii")}
        if isinstance(obj, dict | Mapping):
            return {str(k): encode(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [encode(v) for v in obj]
        return obj

    blob = json.dumps(encode(parts), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hmac.new(key, blob, hashlib.sha256).hexdigest()


class KeyHasher:
    """Keyed hashes of single Secret values within one context (cheap: one HMAC copy each).

    The context (delivery, certificate, scope label…) is bound once; `hash(key, value)` then
    costs one HMAC over the key name and the value bytes.
    """

    __slots__ = ("_base",)

    def __init__(self, key: bytes, context: object) -> None:
        blob = json.dumps(context, sort_keys=True, separators=(",", ":")).encode("utf-8")
        self._base = hmac.new(key, len(blob).to_bytes(4, "big") + blob, hashlib.sha256)

    def hash(self, name: str, value: SecretValue) -> str:
        h = self._base.copy()
        raw = name.encode("utf-8")
        h.update(len(raw).to_bytes(4, "big") + raw + value.reveal())
        return h.hexdigest()[:32]

"""Secret values and the keyed content hash.

A `SecretValue` holds plaintext bytes and refuses to show them: its repr and str are masked,
so a value that slips into a log line or an f-string prints as `<secret>`. Code that must use
the bytes calls `reveal()`, and only the renderers and sinks do.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Final

MIN_GUARDED_LEN: Final = 4
"""Values shorter than this are too common to guard against: a 1-3 byte value (`0`, `yes`)
turns up in any manifest by chance, so the plaintext guard would refuse honest writes."""


class SecretValue:
    """Plaintext bytes with a masked representation."""

    __slots__ = ("_data", "_needles")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._needles: tuple[bytes, ...] | None = None

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
        """The byte strings whose presence in output would leak this value (worked out once:
        one value is guarded in every object of every cluster it goes to)."""
        if self._needles is None:
            self._needles = self._forms()
        return self._needles

    def _forms(self) -> tuple[bytes, ...]:
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


def _json_default(obj: object) -> object:
    """What `json` cannot encode itself: values (as base64, never as text) and mappings."""
    if type(obj) is SecretValue:
        return {"$b": base64.b64encode(obj.reveal()).decode("ascii")}
    if isinstance(obj, bytes):
        return {"$b": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, Mapping):
        return {str(k): v for k, v in obj.items()}
    raise TypeError(f"cannot hash a {type(obj).__name__}")


_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), default=_json_default
).encode


def canonical_json(parts: Mapping[str, object]) -> bytes:
    """Sorted keys, no spaces, ASCII; values as `{"$b": base64}`. Mapping keys are strings
    (every caller's are): that is what makes this one pass of the C encoder."""
    return _CANONICAL(parts).encode("ascii")


class _Keyed:
    """HMAC-SHA256 (RFC 2104) on hashlib's SHA-256 states with the key's pads absorbed once:
    the digest `hmac.new(key, msg, sha256)` gives, for a third less per message (no Python
    wrapper object per copy)."""

    __slots__ = ("inner", "outer")

    def __init__(self, inner: hashlib._Hash, outer: hashlib._Hash) -> None:
        self.inner = inner
        self.outer = outer

    def hexdigest(self, data: bytes) -> str:
        inner = self.inner.copy()
        inner.update(data)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> _Keyed:
    """An HMAC-SHA256 with `key` absorbed: copying it is cheaper than starting a new one."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return _Keyed(hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD)))


_BLOCK: Final = 64  # SHA-256's block size


def content_hash(key: bytes, parts: Mapping[str, object]) -> str:
    """Keyed HMAC-SHA256 over a canonical JSON of `parts` (values as SecretValue or plain)."""
    return keyed_digest(key, canonical_json(parts))


def keyed_digest(key: bytes, blob: bytes) -> str:
    """Hex HMAC-SHA256 of `blob` (a canonical JSON the caller made itself)."""
    return _keyed(key).hexdigest(blob)


json_string: Final = json.encoder.encode_basestring_ascii
"""A str as `canonical_json` writes it (quoted, ASCII-escaped): the same C function."""


def json_object(mapping: Mapping[str, str]) -> str:
    """A mapping of strings to strings as `canonical_json` writes it (sorted keys)."""
    if not mapping:
        return "{}"
    items = sorted(mapping.items())
    return "{" + ",".join([json_string(k) + ":" + json_string(v) for k, v in items]) + "}"


class KeyHasher:
    """Keyed hashes of single Secret values within one context (cheap: one HMAC copy each).

    The context (delivery, certificate, scope label…) is bound once; `hash(key, value)` then
    costs one HMAC over the key name and the value bytes.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, context: object, *, blob: bytes | None = None) -> None:
        """`blob`: the context's canonical JSON, when the caller made it already."""
        if blob is None:
            blob = json.dumps(context, sort_keys=True, separators=(",", ":")).encode("utf-8")
        keyed = _keyed(key)
        self._inner = keyed.inner.copy()
        self._inner.update(len(blob).to_bytes(4, "big") + blob)
        self._outer = keyed.outer

    def hash(self, name: str, value: SecretValue) -> str:
        inner = self._inner.copy()
        raw = name.encode("utf-8")
        inner.update(len(raw).to_bytes(4, "big") + raw + value.reveal())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:32]

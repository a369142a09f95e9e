"""Resolution: read every unique Location once, then pick each ref's key out of its document.

Sources are small adapters (`sources/`); this module owns the dedupe, the bounded concurrency
and the lookup of (dotted) keys in fetched documents, so each source only knows how to read
one Location. A failure is recorded per Location and reaches only the refs that use it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Protocol, runtime_checkable

from secretsync.core import bounded, errors, logs
from secretsync.core.model import Location, ValueRef
from secretsync.core.values import SecretValue

log = logging.getLogger(__name__)

type Document = Mapping[str, object]
"""A fetched document: nested mappings whose leaves are scalars (str, int, float, bool, None)."""


@dataclass(frozen=True, slots=True)
class Unencrypted:
    """A leaf a source found in plaintext where only encrypted values belong (a SOPS file's
    leaf its settings leave readable). It holds nothing; `lookup` refuses to pick it."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """A read Location: its document and, where the source has one, its version."""

    document: Document
    version: str | None = None


class Source(Protocol):
    """Reads one Location. Raises only `errors.ResolveError` subclasses, never with values."""

    kind: ClassVar[str]

    async def fetch(self, location: Location) -> Fetched: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Counted(Protocol):
    """A source that counts its work (requests, reads, logins) for metrics and benchmarks."""

    def counts(self) -> Mapping[str, int]: ...


@dataclass(slots=True)
class Resolution:
    """Outcome of one resolve pass: per ref a value, or the error that stopped it."""

    values: dict[ValueRef, SecretValue] = field(default_factory=dict)
    failures: dict[ValueRef, errors.ResolveError] = field(default_factory=dict)
    versions: dict[Location, str | None] = field(default_factory=dict)
    reads: int = 0

    def all_values(self) -> Iterable[SecretValue]:
        return self.values.values()


def lookup(document: Document, key: str, *, where: str) -> SecretValue:
    """Find `key` in a document: a top-level key first, then a dotted path.

    In a dotted path a segment of digits picks that element of a list (`creds.0.password`,
    `hosts.1`), as External Secrets Operator's `property` paths do; in a mapping it is a key.
    Scalars become text the way JSON writes them (true, 3, 1.5); strings are taken as UTF-8.
    A nested object or list is an error, never `str(dict)`; so is a leaf the source marked
    `Unencrypted`.
    """
    node: object
    if key in document:
        node = document[key]
    else:
        node = document
        for part in key.split("."):
            if isinstance(node, Unencrypted):
                break
            node = _step(node, part)
            if node is _MISSING:
                raise errors.RefNotFound(f"{where}: key {key!r} not found")
    if isinstance(node, Unencrypted):
        raise errors.DecryptFailed(
            f"{where}: key {key!r} is not encrypted in the file (its sops settings leave it in "
            "plaintext); a secret value must be encrypted — use a `value:` literal for text "
            "that is not secret"
        )
    if isinstance(node, str):
        return SecretValue.of(node)
    if isinstance(node, bytes):
        return SecretValue(node)
    if isinstance(node, bool | int | float) or node is None:
        return SecretValue.of(json.dumps(node))
    if isinstance(node, Mapping):
        raise errors.RefNotFound(f"{where}: key {key!r} holds a nested object, not a value")
    raise errors.RefNotFound(
        f"{where}: key {key!r} holds a list, not a value; pick an element by its index ({key}.0)"
    )


_MISSING: Final = object()


def _step(node: object, part: str) -> object:
    """One segment of a dotted path: a key of a mapping, or (digits) an element of a list."""
    if isinstance(node, Mapping):
        return node.get(part, _MISSING)
    if isinstance(node, list | tuple) and part.isascii() and part.isdigit():
        index = int(part)
        if index < len(node) and (part == "0" or not part.startswith("0")):
            return node[index]
    return _MISSING


async def resolve(
    refs: Iterable[ValueRef],
    sources: Mapping[str, Source],  # by `Location.source_key`
    *,
    concurrency: int = 64,
) -> Resolution:
    """Read each unique Location of `refs` once (bounded), then look every distinct ref up.

    Sources keep their own limits (Vault: concurrency and requests per second); this bound
    only keeps the number of pending reads reasonable.
    """
    by_location: dict[Location, dict[ValueRef, None]] = {}
    for ref in refs:
        by_location.setdefault(ref.location, {})[ref] = None
    result = Resolution()

    async def read(location: Location) -> Fetched | errors.ResolveError:
        source = sources.get(location.source_key)
        if source is None:
            return errors.SourceUnavailable(
                f"{location}: no {location.source_key} source configured"
            )
        try:
            return await source.fetch(location)
        except errors.ResolveError as exc:
            return exc

    locations = list(by_location)
    outcomes = await bounded.each(locations, read, limit=concurrency)
    result.reads = len(locations)
    failed: dict[str, list[str]] = {}
    for location, outcome in zip(locations, outcomes, strict=True):
        if isinstance(outcome, errors.ResolveError):
            log.debug("%s", outcome)
            failed.setdefault(type(outcome).__name__, []).append(str(outcome))
            for ref in by_location[location]:
                result.failures[ref] = outcome
            continue
        result.versions[location] = outcome.version
        for ref in by_location[location]:
            try:
                result.values[ref] = lookup(outcome.document, ref.key, where=str(location))
            except errors.ResolveError as exc:
                result.failures[ref] = exc
    # from here on, a log record of any logger that holds one of these values is redacted
    logs.protect(result.values.items())
    for kind, messages in sorted(failed.items()):
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        log.warning("%s: %s%s", kind, messages[0], more)
    return result

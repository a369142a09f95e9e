"""Test doubles of secretsync's own interfaces (never of third-party clients)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from secretsync import errors
from secretsync.model import Location
from secretsync.resolve import Document, Fetched


class FakeSource:
    """An in-memory source: documents by Location path, with failures to inject and a read log."""

    kind: ClassVar[str] = "vault"

    def __init__(self, documents: Mapping[str, Document] | None = None, *, kind: str = "vault"):
        self.documents: dict[str, Document] = dict(documents or {})
        self.failing: dict[str, errors.ResolveError] = {}
        self.reads: list[Location] = []
        self.kind = kind  # type: ignore[misc]

    async def fetch(self, location: Location) -> Fetched:
        self.reads.append(location)
        if location.path in self.failing:
            raise self.failing[location.path]
        if location.path not in self.documents:
            raise errors.RefNotFound(f"{location}: not found")
        return Fetched(self.documents[location.path], version="1")

    async def aclose(self) -> None:
        return None

"""Fixtures for adapter tests against real servers (see tests/support/openbao.py for OpenBao).

`openbao` is one dev server for the whole session; tests isolate themselves with unique
mounts and paths (`unique`). Tests that seal, pause or kill the server use `own_openbao`,
a server of their own that is stopped when the test ends. `proxy` counts what reaches the
shared server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.openbao import CountingProxy, OpenBao, start_openbao


def _served() -> Iterator[OpenBao]:
    server = start_openbao()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    yield from _served()


@pytest.fixture
def own_openbao() -> Iterator[OpenBao]:
    yield from _served()


@pytest.fixture
def unique() -> str:
    """A name no other test uses: for mounts, paths, roles and policies."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def proxy(openbao: OpenBao) -> AsyncIterator[CountingProxy]:
    async with CountingProxy(openbao.address) as counting:
        yield counting

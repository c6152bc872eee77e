"""Fixtures shared by the core's tests: a gated fake server and a store on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakes import DocStore, FakeServer


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
async def store(server: FakeServer) -> AsyncIterator[DocStore]:
    async with DocStore(server) as store:
        yield store

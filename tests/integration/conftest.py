"""Fixtures the integration tests share."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_feeder_pipeline import Feeder


@pytest.fixture
async def make_feeder(nats_server: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """Starts feeder services (``await make(**env)``, ready when returned) and stops every one, asserting a
    clean exit, after the test."""
    started: list[Feeder] = []

    async def make(**env: str) -> Feeder:
        f = Feeder(nats_server.url, tmp_path / "data", **env)
        started.append(f)
        await f.ready()
        return f

    yield make
    for f in started:
        assert f.stop() == 0, f.log.read_text()[-3000:]

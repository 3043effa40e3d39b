"""Session-wide private Docker engine (started on first use, always stopped and cleaned up)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docker.engine import PrivateDocker


@pytest.fixture(scope="session")
def dockerd() -> Iterator[PrivateDocker]:
    """A private dockerd for this test session; every container and the daemon are gone afterwards."""
    why = PrivateDocker.available()
    if why:
        pytest.skip(why)
    engine = PrivateDocker()
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def busybox_image(dockerd: PrivateDocker) -> str:
    """A local busybox image (imported from a tarball: there is no registry)."""
    return dockerd.build_busybox_image()

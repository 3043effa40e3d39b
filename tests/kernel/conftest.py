"""Fixtures the kernel tests share: namespace shells and a fanotify enforcer, always released."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.enforcer.fanotify import FanotifyEnforcer
from tests.kernel.nsutil import NsShell


@pytest.fixture
def shells() -> Iterator[tuple[NsShell, NsShell]]:
    """Two shells, each in its own mount namespace (a selected workload and its sibling)."""
    a, b = NsShell(), NsShell()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def enforcer() -> Iterator[FanotifyEnforcer]:
    """A fanotify enforcer, closed (every mark released) whatever the test did."""
    enf = FanotifyEnforcer()
    try:
        yield enf
    finally:
        enf.close()

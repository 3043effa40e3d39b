"""Fixtures the kernel tests share: namespace shells, a fanotify enforcer and the monitor's programs,
always released; and per-test timeouts stretched by ``BULWARK_TIMEOUT_SCALE`` in emulated guests."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.enforcer.fanotify.enforcer import FanotifyEnforcer
from services.monitor.loader import Probes
from shared.bpf.btf import Btf
from shared.bpf.headers import ensure_btf_tree, use_btf_tree
from tests.conftest import require_root
from tests.kernel.nsutil import NsShell, bound


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Where ``BULWARK_TIMEOUT_SCALE`` is set (the kernel lab's TCG guests, where bcc alone takes
    minutes), every test's pytest-timeout bound is stretched by it: bounds stop hangs, not slowness."""
    if float(os.environ.get("BULWARK_TIMEOUT_SCALE", "1")) == 1:
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker is not None and marker.args else default
        if seconds:
            item.add_marker(pytest.mark.timeout(bound(seconds)), append=False)


@pytest.fixture
def as_root() -> None:
    """The test needs root (BPF, fanotify, namespaces); ``pytest.mark.usefixtures("as_root")``."""
    require_root()


@pytest.fixture(scope="module")
def btf_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh directory for the module's bcc header tree (built from this kernel's BTF on first use)."""
    return tmp_path_factory.mktemp("btf") / "bcc-btf"


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


@pytest.fixture
def probes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Probes, list[bytes]]]:
    """The monitor's programs in this process and the records they send, detached afterwards.
    Indirect parametrization passes Probes keyword arguments."""
    require_root()
    old = os.environ.get("BCC_KERNEL_SOURCE")
    use_btf_tree(ensure_btf_tree(tmp_path / "bcc-btf", btf=Btf.load()))
    records: list[bytes] = []
    probes = Probes(**getattr(request, "param", {}))
    try:
        probes.open(lambda data: records.append(bytes(data)))
        yield probes, records
    finally:
        probes.cleanup()
        if old is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = old

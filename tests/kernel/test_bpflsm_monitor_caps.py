"""A capability check the BPF-LSM enforcer refuses is recorded by the monitor as refused: the monitor
records checks when security_capable() returns, after every LSM has spoken (with a kprobe or the
cap_capable tracepoint it would say "granted", commoncap's answer, and the alert would read Passed).
Runs where BPF-LSM loads (kernel-lab guests); the programs act only on the test's ``unshare`` shells."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.enforcer.bpflsm import BpfLsmEnforcer
from services.monitor.decode.exec_record import DecodeContext
from services.monitor.decode.records import RecordDecoder
from services.monitor.loader import Probes
from shared.bpf.abi import BW_VIS_CAPABILITIES
from tests.kernel.bpfkit import cap_rule
from tests.kernel.nsutil import ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.bpflsm,
              pytest.mark.timeout(900)]


@pytest.fixture
def lsm(btf_tree: Path) -> Iterator[BpfLsmEnforcer]:
    enf = BpfLsmEnforcer(btf_tree=btf_tree)
    try:
        yield enf
    finally:
        enf.close()


def _mknod_checks(mon: Probes, records: list[bytes], mntns: int) -> list[dict[str, Any]]:
    mon.drain()
    dec = RecordDecoder(DecodeContext("n1", "boot", 0))
    events = [dec.feed(r) for r in records]
    return [e for e in events if e and e["kind"] == "capability" and e["mntns"] == mntns
            and e["extra"]["capability"] == "mknod"]


def test_a_refused_capability_is_recorded_as_refused(probes: tuple[Probes, list[bytes]], lsm: BpfLsmEnforcer,
                                                     shells: Any, tmp_path: Path) -> None:
    mon, records = probes
    a, b = shells
    mon.set_visibility({a.mntns: BW_VIS_CAPABILITIES, b.mntns: BW_VIS_CAPABILITIES})
    lsm.apply(ruleset(1, b=(b.mntns, [cap_rule("mknod")])))
    rc, out = b.run(f"mknod {tmp_path}/null c 1 3", 180)
    assert rc != 0 and "Operation not permitted" in out                   # BPF-LSM refused CAP_MKNOD
    assert a.run(f"mknod {tmp_path}/null2 c 1 3", 180)[0] == 0            # the neighbour may
    refused, granted = _mknod_checks(mon, records, b.mntns), _mknod_checks(mon, records, a.mntns)
    assert refused and all(e["ret"] < 0 for e in refused), refused
    assert granted and all(e["ret"] == 0 for e in granted), granted

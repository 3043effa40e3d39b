"""The in-kernel visibility filter through Probes.set_visibility: a mount namespace's own entry (from
its slot in bw_vis_slots, or from the hash when listed namespaces share the slot), the default entry
for every other one, and the union of all entries that lets the programs refuse a kind nobody wants
at once. The probe: two namespace shells open a marker file."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.monitor.loader import Probes
from services.monitor.records import SYS_HEAD, SYS_LAYOUT
from services.monitor.visibility import KIND_BITS
from tests.kernel.nsutil import NsShell

pytestmark = pytest.mark.kernel

FILE = KIND_BITS["file"]
OP_FILE = 5
_MNTNS = 10  # index of bw_task_info.mntns in SYS_HEAD's fields


def _emitted_for(probes: Probes, records: list[bytes], shells: tuple[NsShell, ...], marker: Path) -> set[int]:
    """Mount namespaces whose open of ``marker`` was emitted, after each shell opened it once."""
    records.clear()
    for shell in shells:
        assert shell.run(f"cat {marker} >/dev/null")[0] == 0
    probes.drain()
    want, found = str(marker).encode() + b"\0", set()
    for rec in records:
        head = SYS_HEAD.unpack_from(rec)
        if head[0] != OP_FILE:
            continue
        name_len = head[-2]
        if rec[SYS_LAYOUT["name"]:SYS_LAYOUT["name"] + name_len] == want:
            found.add(head[_MNTNS])
    return found


@pytest.mark.parametrize("probes", [{}, {"vis_slots": 1}, {"vis_slots": 2}], indirect=True,
                         ids=["own-slots", "one-shared-slot", "two-slots"])
def test_own_entry_default_entry_and_nobody(probes: tuple[Probes, list[bytes]], tmp_path: Path) -> None:
    mon, records = probes
    marker = tmp_path / "marker"
    marker.write_text("x")
    a, b = NsShell(), NsShell()
    try:
        mon.set_visibility({0: 0, a.mntns: FILE})           # only a's own entry wants files
        assert _emitted_for(mon, records, (a, b), marker) == {a.mntns}
        mon.set_visibility({0: FILE})                       # the default entry covers both
        assert _emitted_for(mon, records, (a, b), marker) == {a.mntns, b.mntns}
        mon.set_visibility({0: FILE, a.mntns: 0})           # an own entry beats the default
        assert _emitted_for(mon, records, (a, b), marker) == {b.mntns}
        mon.set_visibility({0: FILE, a.mntns: 0, b.mntns: FILE})   # both listed (one slot: shared)
        assert _emitted_for(mon, records, (a, b), marker) == {b.mntns}
        mon.set_visibility({0: 0, b.mntns: 0, a.mntns: FILE})      # swapped, then b leaves
        assert _emitted_for(mon, records, (a, b), marker) == {a.mntns}
        mon.set_visibility({0: FILE, a.mntns: FILE})
        assert _emitted_for(mon, records, (a, b), marker) == {a.mntns, b.mntns}
        slots = {int(k.value): (v.mntns, v.mask) for k, v in mon._bpf[b"bw_vis_slots"].items() if v.mntns}
        assert slots == {a.mntns & (mon.vis_slots - 1): (a.mntns, FILE)}
        before = mon.kernel_stats()["filtered_kernel"]
        mon.set_visibility({0: KIND_BITS["network"]})       # nobody wants files: refused at once
        assert _emitted_for(mon, records, (a, b), marker) == set()
        assert mon.kernel_stats()["filtered_kernel"] >= before + 2
    finally:
        a.close()
        b.close()

"""The in-kernel visibility filter through Probes.set_visibility: a mount namespace's own entry (from
its slot in bw_vis_slots, or from the hash when listed namespaces share the slot), the default entry
for every other one, and the union of all entries that lets the programs refuse a kind nobody wants
at once. The probe: two namespace shells open a marker file. Also: capability checks filtered to
the capabilities the rules name."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.monitor.decode.records import SYS_HEAD
from services.monitor.kernel_filters import CAPS_NAMED, KIND_BITS, visibility_masks
from services.monitor.loader import Probes
from shared.bpf.abi import BW_OP_CAP, BW_OP_FILE, BwSysEvent, offset
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule
from tests.kernel.nsutil import NsShell, ruleset

pytestmark = pytest.mark.kernel

FILE = KIND_BITS["file"]
OP_FILE, OP_CAP = BW_OP_FILE, BW_OP_CAP
CAP_CHOWN, CAP_NET_RAW = 0, 13
_MNTNS = 10  # index of bw_task_info.mntns in SYS_HEAD's fields
_NAME = offset(BwSysEvent, "name")


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
        if rec[_NAME:_NAME + name_len] == want:
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


def _cap_checks(probes: Probes, records: list[bytes], mntns: int) -> set[int]:
    """Capability numbers of the capability records of ``mntns`` drained so far."""
    probes.drain()
    heads = [SYS_HEAD.unpack_from(rec) for rec in records]
    records.clear()
    return {head[16] for head in heads if head[0] == OP_CAP and head[_MNTNS] == mntns}


def test_named_capabilities_only(probes: tuple[Probes, list[bytes]], tmp_path: Path) -> None:
    """A namespace whose rules name CAP_NET_RAW emits the checks of that capability, not the
    CAP_CHOWN of a chown; with visibility wanting capabilities, both."""
    mon, records = probes
    target = tmp_path / "owned"
    target.write_text("x")
    raw = "/usr/bin/python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close()'"
    a = NsShell()
    try:
        rule = Rule(policy="caps", policy_kind="KubeArmorPolicy", policy_namespace="default",
                    operation="Capabilities", action="Audit", capability="net_raw")
        quiet = Workload(id="w", name="w", namespace="default", kind="container", node="n", mntns=a.mntns,
                         pidns=0, namespace_annotations={"kubearmor-visibility": "none"})
        masks = visibility_masks(ruleset(1, w=(a.mntns, [rule])), {"w": quiet}, host_mntns=1, containers="none")
        assert masks[a.mntns] == CAPS_NAMED and masks.caps == 1 << CAP_NET_RAW
        mon.set_visibility(masks)
        _cap_checks(mon, records, a.mntns)
        before = mon.kernel_stats()["filtered_kernel"]
        assert a.run(f"chown 1 {target} && {raw}")[0] == 0
        assert _cap_checks(mon, records, a.mntns) == {CAP_NET_RAW}
        assert mon.kernel_stats()["filtered_kernel"] > before           # CAP_CHOWN stayed in the kernel

        mon.set_visibility(visibility_masks(ruleset(2, w=(a.mntns, [rule])), {}, host_mntns=1))
        assert a.run(f"chown 2 {target} && {raw}")[0] == 0
        assert {CAP_CHOWN, CAP_NET_RAW} <= _cap_checks(mon, records, a.mntns)
    finally:
        a.close()

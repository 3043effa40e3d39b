"""The monitor's open prefilter (bpf/include/bw_names.h) in a real Docker container: an overlay
root, bind-mounted /etc files, and a ruled path that is a symlink whose absolute target only makes
sense inside the container. Ruled opens are emitted, an unruled one is dropped by its names."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.monitor.decode.records import SYS_HEAD
from services.monitor.kernel_filters import visibility_masks
from services.monitor.loader import Probes
from services.monitor.namesigs import entry_names
from shared.bpf.abi import BW_OP_FILE, BwSysEvent, offset
from shared.schemas.identity import Workload
from tests.docker.engine import PrivateDocker
from tests.kernel.conftest import probes  # noqa: F401  (the fixture)
from tests.kernel.nsutil import file_rule, ruleset

pytestmark = [pytest.mark.docker, pytest.mark.kernel]

OP_FILE = BW_OP_FILE
_NAME = offset(BwSysEvent, "name")


def _emitted_names(mon: Probes, records: list[bytes], mntns: int) -> set[bytes]:
    """Names of the successful file records of ``mntns`` drained so far."""
    mon.drain()
    out = set()
    for rec in records:
        head = SYS_HEAD.unpack_from(rec)
        if head[0] == OP_FILE and head[10] == mntns and head[15] >= 0:
            out.add(rec[_NAME:_NAME + head[-2]].rstrip(b"\0"))
    records.clear()
    return out


def test_prefilter_in_a_container(probes: tuple[Probes, list[bytes]], dockerd: PrivateDocker,  # noqa: F811
                                  busybox_image: str) -> None:
    mon, records = probes
    dockerd.run("names-a", busybox_image, {})
    pid = int(dockerd.cli("inspect", "-f", "{{.State.Pid}}", "names-a").stdout)
    mntns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
    root = Path(f"/proc/{pid}/root")
    (root / "etc/real.conf").write_text("r\n")
    (root / "etc/other.conf").write_text("o\n")
    os.symlink("/etc/real.conf", root / "etc/link.conf")   # absolute: only right inside the container
    rules = [file_rule("Audit", policy="names", path="/etc/link.conf"),
             file_rule("Audit", policy="names", path="/etc/hostname")]
    quiet = Workload(id="w", name="w", namespace="default", kind="container", node="n", mntns=mntns,
                     pidns=0, namespace_annotations={"kubearmor-visibility": "none"})
    masks = visibility_masks(ruleset(1, w=(mntns, rules)), {"w": quiet}, host_mntns=1, containers="none")
    masks.names = entry_names(masks.paths)
    assert b"real.conf" in masks.names
    mon.set_visibility(masks)
    _emitted_names(mon, records, mntns)
    before = mon.kernel_stats()["filtered_kernel_names"]

    dockerd.cli("exec", "names-a", "cat", "/etc/link.conf", "/etc/hostname", "/etc/other.conf")
    seen = _emitted_names(mon, records, mntns)
    assert {b"/etc/link.conf", b"/etc/hostname"} <= seen, seen
    assert b"/etc/other.conf" not in seen
    assert mon.kernel_stats()["filtered_kernel_names"] > before

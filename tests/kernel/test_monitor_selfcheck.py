"""The start-up self-check: passes on a good header tree; the monitor refuses to run on a bad one."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.monitor.loader import DEFAULT_BPF_DIR
from services.monitor.selfcheck import BwSelfReport, SelfCheckFailed, run_selfcheck
from shared.bpf import abi
from shared.bpf.btf import Btf
from shared.bpf.headers import ensure_btf_tree, use_btf_tree
from tests.conftest import require_root
from tests.kernel.nsutil import bound

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_bcc_env() -> object:
    old = os.environ.get("BCC_KERNEL_SOURCE")
    yield
    if old is None:
        os.environ.pop("BCC_KERNEL_SOURCE", None)
    else:
        os.environ["BCC_KERNEL_SOURCE"] = old


def test_selfcheck_sees_this_process(tmp_path: Path, restore_bcc_env: object) -> None:
    require_root()
    btf = Btf.load()
    tree = ensure_btf_tree(tmp_path / "bcc-btf", btf=btf)
    stamp = (tree / ".bulwark-stamp").stat().st_mtime_ns
    assert ensure_btf_tree(tree, btf=btf) == tree and (tree / ".bulwark-stamp").stat().st_mtime_ns == stamp
    use_btf_tree(tree)
    report = run_selfcheck(DEFAULT_BPF_DIR, btf)
    assert report.mntns == os.stat("/proc/self/ns/mnt").st_ino and report.tgid == os.getpid()
    assert report.exe == os.path.realpath("/proc/self/exe") and report.cwd == os.getcwd()
    # every member of every record of events.h, as this kernel loaded the compiled program's BTF
    assert set(report.abi_compared) == {cls.C_NAME for cls in abi.RECORDS} | {"bw_self_report"}
    assert sum(report.abi_compared[cls.C_NAME] for cls in abi.RECORDS) == abi.field_count(abi.RECORDS)
    assert report.abi_compared["bw_self_report"] == abi.field_count((BwSelfReport,))
    assert report.abi_compared["bw_enf_event"] == abi.field_count((abi.BwEnfEvent,)) > 0
    assert report.abi_compared["bw_lsm_event"] == abi.field_count((abi.BwLsmEvent,)) > 0


def test_a_record_that_differs_from_abi_fails_the_selfcheck(tmp_path: Path, restore_bcc_env: object) -> None:
    """events.h changed without shared/bpf/abi.py: the real self-check names every member that moved."""
    require_root()
    btf = Btf.load()
    use_btf_tree(ensure_btf_tree(tmp_path / "bcc-btf", btf=btf))
    bpf_dir = tmp_path / "bpf"
    shutil.copytree(DEFAULT_BPF_DIR, bpf_dir)
    events = bpf_dir / "include/events.h"
    text = events.read_text()
    anchor = "\t__u32 rule_id;"
    assert text.count(anchor) == 1
    events.write_text(text.replace(anchor, "\t__u32 sabotage;\n" + anchor))
    with pytest.raises(SelfCheckFailed) as failed:
        run_selfcheck(bpf_dir, btf)
    message = str(failed.value)
    assert "bw_enf_info.rule_id: offset BTF 8, abi.py 4" in message
    assert "bw_lsm_event.enf.sabotage: in the compiled struct, not in abi.py" in message
    assert "sizeof(struct bw_enf_event)" in message and "bw_lsm_event.exe: offset BTF" in message


def test_monitor_refuses_to_run_with_wrong_offsets(tmp_path: Path, nats_server) -> None:
    require_root()
    good = ensure_btf_tree(tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)                      # same stamp: the monitor will use it as cached
    vmlinux = bad / "include/vmlinux.h"
    text = vmlinux.read_text()
    assert "struct dentry {\n" in text
    vmlinux.write_text(text.replace("struct dentry {\n", "struct dentry {\n\tlong __bw_sabotage;\n", 1))
    env = {**os.environ, "BULWARK_NATS_URL": nats_server.url, "BULWARK_NODE_NAME": "test-node",
           "BULWARK_DATA_DIR": str(tmp_path / "data"), "BULWARK_BTF_TREE_DIR": str(bad)}
    proc = subprocess.run([sys.executable, "-m", "services.monitor"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=bound(120))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refusing to run" in proc.stderr and "dentry.d_parent: BTF 24" in proc.stderr


def test_tree_defines_every_helper_bcc_names_and_what_this_kernel_has(tmp_path: Path) -> None:
    """bcc's helpers.h names helpers this kernel may lack (cgrp_storage_get on 6.1): the tree defines
    those as absent so it compiles, and says which ones the kernel has (BW_HELPER_<name>)."""
    require_root()
    from shared.bpf.headers import ABSENT_HELPER_ID, bcc_helper_names

    btf = Btf.load()
    kconfig = (ensure_btf_tree(tmp_path / "bcc-btf", btf=btf) / "include/linux/kconfig.h").read_text()
    have = {name.removeprefix("BPF_FUNC_") for name in btf.enumerators("bpf_func_id")}
    for name in bcc_helper_names():
        absent = f"#define BPF_FUNC_{name} {ABSENT_HELPER_ID:#x}" in kconfig
        assert absent == (name not in have), name
    assert ("#define BW_HELPER_get_current_task_btf 1" in kconfig) == ("get_current_task_btf" in have)
    assert "#define BW_HELPER_map_lookup_elem 1" in kconfig

"""The kernels table from a result folder: junit XML and `bulwark probe` lines become one row (no guest)."""
from __future__ import annotations

from pathlib import Path

from tests.vm.lab import parse_probe, read_row, render_table

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.kernel.test_monitor_exec" name="test_exec_seen" file="tests/kernel/test_monitor_exec.py"/>
<testcase classname="tests.kernel.test_monitor_kinds" name="test_kinds"/>
<testcase classname="tests.kernel.test_signal_enforcer" name="test_kill"><failure message="x">boom</failure></testcase>
<testcase classname="tests.kernel.test_fanotify_enforcer" name="test_deny"/>
<testcase classname="tests.kernel.test_apparmor_enforcer" name="test_missing_profile_means_the_command_never_runs"/>
</testsuite></testsuites>
"""
PROBE = """bpf: Failed to load program: Operation not permitted
BPFLSM       unsupported  BPF_PROG_LOAD(LSM bpf_lsm_file_open) refused: EPERM
Fanotify     supported    fanotify permission events (FAN_OPEN_EXEC_PERM) work
AppArmor     unsupported  AppArmor is not active in this kernel
Monitor      supported    bcc programs load on tracepoints
"""


def test_row_counts_each_column_and_gives_reasons(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    (tmp_path / "probe.txt").write_text(PROBE)
    (tmp_path / "kernel.txt").write_text("6.1.0-50-amd64\nlockdown,capability,bpf\n")
    row = read_row(tmp_path)
    assert row.kernel == "6.1.0-50-amd64"
    assert row.cell("monitor") == "pass (2)"
    assert row.cell("fanotify") == "pass (1)"
    assert row.cell("eBPF signal").startswith("FAIL 1/1: test_kill")
    assert row.cell("BPF-LSM") == "unsupported: BPF_PROG_LOAD(LSM bpf_lsm_file_open) refused: EPERM"
    assert row.cell("AppArmor") == "unsupported: AppArmor is not active in this kernel (1 kernel-independent passed)"
    assert row.cell("e2e") == "not run"
    table = render_table([row])
    assert table.splitlines()[0].startswith("| kernel | LSMs | monitor |")
    assert "| 6.1.0-50-amd64 | lockdown, capability, bpf | pass (2) |" in table


def test_probe_lines_parsed_by_name() -> None:
    found = parse_probe(PROBE)
    assert found["Fanotify"] == (True, "fanotify permission events (FAN_OPEN_EXEC_PERM) work")
    assert found["BPFLSM"][0] is False
    assert "bpf:" not in found


def test_reason_from_the_tests_own_deselection_when_no_probe_ran(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    (tmp_path / "pytest.txt").write_text("deselected the 'bpflsm' tests here (BPF_PROG_LOAD refused: EPERM); "
                                         "tests/vm runs them inside kernel-lab guests\n")
    assert read_row(tmp_path).cell("BPF-LSM") == "unsupported: BPF_PROG_LOAD refused: EPERM"

"""Each kernel of the lab's matrix boots under QEMU and runs the kernel tests inside, skips forbidden;
every one of them must pass there. The table of what each enforcer did is printed (and kept in the
results folder: ``BULWARK_KLAB_RESULTS``, default a temporary one)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.vm.lab import SUITES, boot_and_test, read_row, render_table

pytestmark = [pytest.mark.vm, pytest.mark.timeout(5400)]  # a guest boots, compiles and tests under TCG


@pytest.mark.parametrize("suite", SUITES)
def test_kernel_tests_pass_in_guest(suite: str, tmp_path: Path) -> None:
    require_root()
    base = os.environ.get("BULWARK_KLAB_RESULTS")
    results = Path(base) / suite if base else tmp_path / suite
    status = boot_and_test(suite, results)
    row = read_row(results)
    print(f"\n{render_table([row])}")
    console = (results / "console.txt").read_text(errors="replace") if (results / "console.txt").exists() else ""
    assert (results / "junit.xml").exists(), f"{suite}: no junit.xml (status {status}); console:\n{console[-3000:]}"
    failed = {column: cell.failed for column, cell in row.cells.items() if cell.failed}
    assert not failed, f"{suite} ({row.kernel}): failed {failed}\n{render_table([row])}"
    assert sum(cell.passed for cell in row.cells.values()) > 0, f"{suite}: no test passed"
    assert status == 0, f"{suite}: the guest's pytest exited {status}; console:\n{console[-3000:]}"

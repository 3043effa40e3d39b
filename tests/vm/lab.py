"""The kernel lab from Python: boot a suite's guest (scripts/kernel-lab/klab.sh), run the kernel tests
inside, and turn their junit XML and ``bulwark probe`` into one row of the kernels table.

``python -m tests.vm.lab host DIR "TESTS"`` runs the same as a guest does, natively on this host, into DIR.
``python -m tests.vm.lab table ROOT`` prints the Markdown table of ROOT/host and ROOT/<suite> (each with
``kernel.txt``, ``probe.txt``, ``junit.xml``), as ``make test-kernels`` writes docs/kernels.md.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ROOT", "KLAB", "SUITES", "CI_SUITE", "COLUMNS", "Outcome", "Row", "suites_wanted", "boot_and_test",
           "BOOT_DEADLINE", "run_here", "guest_command", "read_row", "render_table"]

ROOT = Path(__file__).resolve().parents[2]
KLAB = ROOT / "scripts/kernel-lab/klab.sh"
SUITES = tuple(line.split()[0] for line in (ROOT / "scripts/kernel-lab/matrix").read_text().splitlines()
               if line.strip() and not line.startswith("#"))
# what a guest runs unless BULWARK_KLAB_TESTS says otherwise (CI, `make test`): the tests that need a
# guest's kernel (BPF-LSM, AppArmor) and the monitor's, whose programs differ per kernel, and the whole
# stack enforcing a policy with BPF-LSM, then with AppArmor (tests/e2e/test_lsm_stack.py). fanotify and
# Landlock run natively on the host in the same CI run; `make test-kernels` runs everything everywhere.
DEFAULT_TESTS = "tests/kernel tests/e2e/test_lsm_stack.py -k 'monitor or bpflsm or apparmor'"
# `bulwark probe` compiles every enforcer's programs: minutes under TCG. CI (`make test`) leaves it out
# and takes the BPF-LSM and AppArmor reasons from the tests' own deselection lines; make test-kernels
# sets BULWARK_KLAB_PROBE=1.
FULL_PROBE = os.environ.get("BULWARK_KLAB_PROBE") == "1"
# how much longer than on a host a guest's waits may take before they count as hung (TCG emulation)
GUEST_TIMEOUT_SCALE = float(os.environ.get("BULWARK_TIMEOUT_SCALE", "10"))
# table column -> (test file name prefixes, the `bulwark probe` name that says why it cannot run)
COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "monitor": (("tests/kernel/test_monitor_",), "Monitor"),
    "BPF-LSM": (("tests/kernel/test_bpflsm",), "BPFLSM"),
    "AppArmor": (("tests/kernel/test_apparmor",), "AppArmor"),
    "fanotify": (("tests/kernel/test_fanotify",), "Fanotify"),
    "eBPF signal": (("tests/kernel/test_signal",), "eBPF Signal"),
    "Landlock": (("tests/kernel/test_landlock",), "Landlock"),
    "e2e": (("tests/e2e/",), ""),
}


CI_SUITE = "bookworm"  # Debian 12's 6.1: BPF-LSM and AppArmor both active; what `make test` (and CI) boots


def suites_wanted() -> list[str]:
    """Suites to boot: ``BULWARK_KLAB_SUITES`` (a comma list, ``all``, or ``none``); unset, the one CI
    runs (bookworm: about 30 minutes under TCG for DEFAULT_TESTS), while
    ``make test-kernels`` boots them all."""
    raw = os.environ.get("BULWARK_KLAB_SUITES", CI_SUITE).strip()
    if raw == "all":
        return list(SUITES)
    if raw == "none":
        return []
    wanted = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SUITES]
    if unknown:
        raise ValueError(f"BULWARK_KLAB_SUITES names unknown suites {unknown}; the matrix has {list(SUITES)}")
    return wanted


def guest_command(results: Path, tests: str, scale: float = GUEST_TIMEOUT_SCALE) -> str:
    """What a guest runs: its kernel and LSMs, the probes, then the tests with skips forbidden
    and their hang bounds stretched by ``scale`` (BULWARK_TIMEOUT_SCALE: emulation is slow)."""
    r = str(results)
    py = f"{ROOT}/.venv/bin/python"
    probe = f"timeout 1800 {ROOT}/.venv/bin/bulwark probe > {r}/probe.txt 2>&1; " if FULL_PROBE else ""
    return (f"cd {ROOT} && "
            f"{{ uname -r; cat /sys/kernel/security/lsm; echo; }} > {r}/kernel.txt; {probe}"
            f"timeout 900 {py} -m services.monitor.probe --static >> {r}/probe.txt 2>&1; "
            f"BULWARK_TIMEOUT_SCALE={scale:g} BULWARK_NO_SKIP=1 {py} -m pytest -p no:cacheprovider -ra -q {tests} "
            f"--junitxml={r}/junit.xml -o junit_family=xunit2 > {r}/pytest.txt 2>&1; "
            f"status=$?; tail -40 {r}/pytest.txt; exit $status")


def _fresh(results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("kernel.txt", "probe.txt", "junit.xml", "pytest.txt", "console.txt"):
        (results / stale).unlink(missing_ok=True)


def run_here(results: Path, tests: str) -> int:
    """Run what a guest runs, natively on this host; the pytest status."""
    _fresh(results)
    with open(results / "console.txt", "wb") as console:
        return subprocess.run(["bash", "-c", guest_command(results, tests, scale=1)], cwd=ROOT, stdout=console,
                              stderr=subprocess.STDOUT, check=False).returncode


# A guest that has not started its command this long after boot began never will (a kernel that
# panicked early sits there until klab.sh's own hour-long timeout): stopped, status 125.
BOOT_DEADLINE = float(os.environ.get("BULWARK_KLAB_BOOT_DEADLINE", "900"))
GUEST_STARTED = b"KLAB-GUEST kernel="


def boot_and_test(suite: str, results: Path, tests: str | None = None) -> int:
    """Boot ``suite``, run the tests inside with ``results`` writable; the guest command's status."""
    _fresh(results)
    cmd = guest_command(results, tests or os.environ.get("BULWARK_KLAB_TESTS", DEFAULT_TESTS))
    console_path = results / "console.txt"
    with open(console_path, "wb") as console:
        proc = subprocess.Popen(["bash", str(KLAB), "run", suite, str(results), cmd], cwd=ROOT,
                                stdout=console, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + BOOT_DEADLINE
            while proc.poll() is None and GUEST_STARTED not in console_path.read_bytes():
                if time.monotonic() > deadline:
                    console.write(f"\nklab: the guest did not start its command within {BOOT_DEADLINE:.0f} s "
                                  "(boot failure); stopped\n".encode())
                    console.flush()
                    proc.terminate()
                    proc.wait(60)
                    return 125
                time.sleep(2)
            return proc.wait()
        finally:
            if proc.poll() is None:   # interrupted (a timeout, Ctrl-C): klab.sh stops its guest on TERM
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass
class Outcome:
    """One column of one kernel: counts of its tests' results."""

    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: int = 0

    def text(self, why_not: str) -> str:
        """pass / FAIL / unsupported-with-reason / not run."""
        if self.failed:
            return f"FAIL {len(self.failed)}/{len(self.failed) + self.passed}: {', '.join(self.failed[:3])}"
        if why_not:  # the enforcer cannot load here: its tests that need no kernel support may still pass
            return f"unsupported: {why_not}" + (f" ({self.passed} kernel-independent passed)" if self.passed else "")
        if self.passed:
            return f"pass ({self.passed})" + (f", {self.skipped} skipped" if self.skipped else "")
        return "not run"


@dataclass
class Row:
    """One kernel: its release, LSMs and an outcome per column."""

    kernel: str
    lsm: str
    cells: dict[str, Outcome]
    probe: dict[str, tuple[bool, str]]

    def cell(self, column: str) -> str:
        name = COLUMNS[column][1]
        supported, reason = self.probe.get(name, (True, ""))
        return self.cells[column].text("" if supported else reason)


_PROBE_RE = re.compile(r"^(BPFLSM|Fanotify|eBPF Signal|AuditOnly|AppArmor|Landlock|Monitor)\s+"
                       r"(supported|unsupported)\s+(.*)$")


_DESELECTED_RE = re.compile(r"^deselected the '(\w+)' tests here \((.*)\); tests/vm runs them", re.M)
_MARKER_PROBE = {"bpflsm": "BPFLSM", "apparmor": "AppArmor"}


def parse_probe(text: str) -> dict[str, tuple[bool, str]]:
    """``bulwark probe`` (and the monitor's probe) lines -> name -> (supported, reason)."""
    out: dict[str, tuple[bool, str]] = {}
    for line in text.splitlines():
        found = _PROBE_RE.match(line.strip())
        if found:
            out[found.group(1)] = (found.group(2) == "supported", found.group(3).strip())
    return out


def _column_of(classname: str, file: str) -> str | None:
    path = file or classname.replace(".", "/") + ".py"
    for column, (prefixes, _name) in COLUMNS.items():
        if any(path.startswith(p) for p in prefixes):
            return column
    return None


def read_row(results: Path) -> Row:
    """A kernel's row from its result folder (a missing junit.xml leaves every column "not run")."""
    kernel_txt = (results / "kernel.txt").read_text().split("\n") if (results / "kernel.txt").exists() else []
    kernel = kernel_txt[0].strip() if kernel_txt else results.name
    lsm = kernel_txt[1].strip() if len(kernel_txt) > 1 else ""
    probe = parse_probe((results / "probe.txt").read_text(errors="replace")) \
        if (results / "probe.txt").exists() else {}
    if (results / "pytest.txt").exists():
        for marker, why in _DESELECTED_RE.findall((results / "pytest.txt").read_text(errors="replace")):
            probe.setdefault(_MARKER_PROBE[marker], (False, why))
    cells = {c: Outcome() for c in COLUMNS}
    junit = results / "junit.xml"
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            column = _column_of(case.get("classname", ""), case.get("file", ""))
            if column is None:
                continue
            cell = cells[column]
            if case.find("failure") is not None or case.find("error") is not None:
                cell.failed.append(case.get("name", "?"))
            elif case.find("skipped") is not None:
                cell.skipped += 1
            else:
                cell.passed += 1
    return Row(kernel, lsm, cells, probe)


def render_table(rows: list[Row]) -> str:
    """The Markdown table: kernel x (monitor, each enforcer, e2e)."""
    head = ["kernel", "LSMs", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.kernel, row.lsm.replace(",", ", "), *(row.cell(c) for c in COLUMNS)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """``host DIR TESTS`` or ``table ROOT``."""
    if len(argv) == 3 and argv[0] == "host":
        return run_here(Path(argv[1]).resolve(), argv[2])
    if len(argv) == 2 and argv[0] == "table":
        root = Path(argv[1])
        dirs = [root / name for name in ("host", *SUITES) if (root / name / "kernel.txt").exists()]
        print(render_table([read_row(d) for d in dirs]), end="")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``bulwark policy validate`` prints OK/INVALID per document and exits 0 only when all are valid."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

POLICIES = Path(__file__).resolve().parents[1] / "e2e" / "policies"


def _run(*paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bulwark.cli", "policy", "validate", *paths],
                          capture_output=True, text=True)


def test_valid_files_print_ok_and_exit_zero() -> None:
    out = _run(str(POLICIES / "block-sleep.yaml"), str(POLICIES / "audit-true.yaml"))
    assert out.returncode == 0
    assert out.stdout.splitlines() == ["OK KubeArmorPolicy demo/block-sleep", "OK KubeArmorPolicy demo/audit-true"]


def test_every_problem_of_every_document_is_named(tmp_path: Path) -> None:
    multi = tmp_path / "multi.yaml"
    multi.write_text((POLICIES / "block-sleep.yaml").read_text() + "---\n" + (POLICIES / "invalid.yaml").read_text())
    out = _run(str(multi))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0] == "OK KubeArmorPolicy demo/block-sleep"
    assert f"INVALID {multi}#2: spec.severity: must be at most 10, got 11" in lines
    assert any(line.startswith(f"INVALID {multi}#2: spec.action:") for line in lines)
    assert any(line.startswith(f"INVALID {multi}#2: spec.process.matchPaths[0].path:") for line in lines)


def test_missing_path_and_bad_yaml_are_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    out = _run(str(bad), str(tmp_path / "nope.yaml"))
    assert out.returncode == 1
    assert out.stdout.count("INVALID") >= 2

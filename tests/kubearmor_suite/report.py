"""The summary table: every case's verdict, and every spec or scenario that cannot apply here, with why."""
from __future__ import annotations

import pytest

__all__ = ["RESULTS", "NOT_APPLICABLE", "STACK_EXIT", "record", "lines", "register_not_applicable"]

RESULTS: dict[str, tuple[str, str]] = {}  # case id -> (verdict, detail), in the order cases finished
NOT_APPLICABLE: list[tuple[str, str]] = []
STACK_EXIT: list[int] = []
_PACKAGE = "tests/kubearmor_suite/"
_WIDTH = 200


def register_not_applicable(case: str, reason: str) -> None:
    if (case, reason) not in NOT_APPLICABLE:
        NOT_APPLICABLE.append((case, reason))


def _case(report: pytest.TestReport) -> str | None:
    if _PACKAGE not in report.nodeid.replace("\\", "/"):
        return None
    _, sep, param = report.nodeid.partition("[")
    return param[:-1] if sep else report.nodeid.rsplit("::", 1)[-1]


def _first_line(report: pytest.TestReport) -> str:
    """The failure's own message (first line), not the source line pytest points at."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(getattr(crash, "message", "") or report.longrepr or "")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.removeprefix("tests.kubearmor_suite.steps.StepFailed: ")


def record(report: pytest.TestReport) -> None:
    """Fold one phase report into the case's verdict (a failing setup or teardown counts too)."""
    case = _case(report)
    if case is None:
        return
    xfail = getattr(report, "wasxfail", None)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if xfail is not None:
            verdict, detail = ("xpass", f"XPASS (the gap may be fixed): {xfail}") if report.passed else ("xfail", xfail)
        elif report.passed:
            verdict, detail = "pass", ""
        elif report.skipped:
            verdict, detail = "skip", _first_line(report)
        else:
            verdict, detail = ("fail" if report.when == "call" else "error"), _first_line(report)
        RESULTS[case] = (verdict, detail)
    elif report.when == "teardown" and report.failed and case in RESULTS:
        verdict, detail = RESULTS[case]
        RESULTS[case] = (verdict + "+teardown error", (detail + " | " if detail else "") + _first_line(report))


def lines() -> list[str]:
    """The table, as lines for the terminal."""
    out = ["", "=" * 30 + " KubeArmor conformance (tests/kubearmor_suite) " + "=" * 30]
    counts: dict[str, int] = {}
    width = max([len(c) for c in RESULTS] + [len(c) for c, _ in NOT_APPLICABLE] + [10])
    width = min(width, 110)
    for case, (verdict, detail) in RESULTS.items():
        counts[verdict] = counts.get(verdict, 0) + 1
        out.append(f"{case[:width]:<{width}}  {verdict:<7} {detail[:_WIDTH]}")
    for case, reason in NOT_APPLICABLE:
        counts["not applicable"] = counts.get("not applicable", 0) + 1
        out.append(f"{case[:width]:<{width}}  {'n/a':<7} {reason}")
    out.append("totals: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if STACK_EXIT and STACK_EXIT[-1] != 0:
        out.append(f"bulwark up exited with {STACK_EXIT[-1]} at the end of the session")
    return out

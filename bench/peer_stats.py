"""bench/peers.py's arithmetic: ratios with intervals (as bench/realistic_overhead.py computes them) and
the verdicts on what each configuration reported and stopped. Pure: nothing is run here."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from peer_rules import Violation
from realistic_overhead import bootstrap_median, round_ratios

Sample = dict[str, float]  # one run: metric -> value
Phase = tuple[list[Sample], list[Sample]]  # (the configuration's runs, the no-peer runs either side)
NONE = "none"  # the no-peer phases' column


@dataclass(frozen=True)
class Summary:
    """One configuration and metric over the rounds: ratio = configuration / no peer."""

    ratios: list[float]
    median: float
    lo: float
    hi: float


def summarise(phases: list[Phase], metric: str) -> Summary:
    """Per round median(B runs) / median(A runs either side); their median and bootstrap 95% interval."""
    ratios = round_ratios(phases, metric)
    lo, hi = bootstrap_median(ratios)
    return Summary(ratios, statistics.median(ratios), lo, hi)


def summary_line(metric: str, s: Summary, width: int = 16) -> str:
    """``metric ratio min-max [lo, hi] per-round``, as realistic_overhead.py prints it."""
    return (f"  {metric:{width}s} {s.median:6.3f}  {min(s.ratios):.3f}-{max(s.ratios):.3f}  "
            f"[{s.lo:.3f}, {s.hi:.3f}]  {' '.join(f'{r:.3f}' for r in s.ratios)}")


@dataclass
class Probe:
    """One phase's run of the violations: each one's exit status and how many reports the configuration
    made of it, and how many reports of ruled paths it made during the timing runs before."""

    config: str
    rcs: dict[Violation, int]
    seen: dict[Violation, int]
    during_runs: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """Per violation and configuration: rounds seen, rounds stopped, rounds run; and every problem."""

    cells: dict[tuple[Violation, str], tuple[int, int, int]]
    problems: list[str]


def judge(probes: Sequence[Probe], violations: Sequence[Violation]) -> Verdict:
    """The detection table and what makes it invalid: a violation that failed with no peer loaded (not
    exercised), more reports than attempts, reports during the timing runs, a configuration whose
    answer changes between rounds, a peer that never reported anything."""
    cells: dict[tuple[Violation, str], tuple[int, int, int]] = {}
    problems: list[str] = []
    configs = list(dict.fromkeys(p.config for p in probes))
    for config in configs:
        mine = [p for p in probes if p.config == config]
        peer = config not in (NONE, "aa")
        for p in mine:
            if p.during_runs:
                problems.append(f"{config}: {p.during_runs} report(s) of ruled paths during the timing runs "
                                f"(the workload touches none)")
        for v in violations:
            rcs = [p.rcs.get(v) for p in mine]
            if any(rc is None for rc in rcs):
                problems.append(f"{config}: {v.label()} was not run in every phase")
                continue
            seen = [p.seen.get(v, 0) for p in mine]
            stopped = [rc != 0 for rc in rcs]
            cells[(v, config)] = (sum(s > 0 for s in seen), sum(stopped), len(mine))
            if not peer and any(stopped):
                problems.append(f"{v.label()} failed with no peer loaded (exit {rcs}): not exercised")
            if any(s > 1 for s in seen):
                problems.append(f"{config}: {v.label()} reported {max(seen)} times for one attempt (counts disagree)")
            if peer and (len(set(s > 0 for s in seen)) > 1 or len(set(stopped)) > 1):
                problems.append(f"{config}: {v.label()} answered differently across rounds (seen {seen}, "
                                f"stopped {stopped})")
        if peer and mine and not any(p.seen.get(v, 0) for p in mine for v in violations):
            problems.append(f"{config}: reported none of the violations in any round (its rules never fired)")
    return Verdict(cells, problems)


def table(verdict: Verdict, violations: Sequence[Violation], configs: Sequence[str], root: str = "") -> list[str]:
    """Rows: violations (paths shown relative to ``root``); columns: configurations; cells
    ``seen s/n, stopped b/n`` (``ran r/n`` with no peer)."""
    head = f"  {'violation':40s}" + "".join(f"{c:>24s}" for c in configs)
    rows = [head]
    for v in violations:
        cells = []
        for c in configs:
            seen, stopped, runs = verdict.cells.get((v, c), (0, 0, 0))
            if not runs:
                cells.append(f"{'-':>24s}")
            elif c in (NONE, "aa"):
                cells.append(f"{f'ran {runs - stopped}/{runs}':>24s}")
            else:
                cells.append(f"{f'seen {seen}/{runs}, stopped {stopped}/{runs}':>24s}")
        label = v.label().replace(root.rstrip("/") + "/", "") if root else v.label()
        rows.append(f"  {label[-40:]:40s}" + "".join(cells))
    return rows

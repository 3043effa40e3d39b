"""What a matchPatterns/execname rule costs under fanotify: the workload's mounts are marked and every
open (File) or exec (Process) in it waits for a verdict judged by path. Same run, interleaved rounds:

- none:     no enforcer
- exact:    a Block rule on one exact path (the measured file is not marked: the usual cost, ~none)
- pattern:  a File Block rule with a glob that does not match the measured file (every open judged)
- execname: a Process Block rule by name (every exec in the workload judged)

Rows: open/close of a file in the workload (ns/op, C loop), exec of a binary (us/exec, sh loop); ratios
against ``none`` of the same round set (min over rounds: noise only adds). Exits 1 when a phase did not
run or the enforcer counted no verdict where one was due (the measurement would be invalid).
Run as root: ``.venv/bin/python bench/fanotify_patterns.py [--rounds 3]``.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.enforcer_overhead import C_OPEN  # noqa: E402
from services.enforcer.fanotify.enforcer import FanotifyEnforcer  # noqa: E402
from services.policy.globs import glob_to_regex  # noqa: E402
from shared.schemas.rules import Rule  # noqa: E402
from tests.kernel.nsutil import NsShell, ruleset  # noqa: E402

PHASES = ("none", "exact", "pattern", "execname")


def _rule(operation: str, **kw: str) -> Rule:
    return Rule(policy="bench", policy_kind="KubeArmorPolicy", policy_namespace="bench", operation=operation,
                action="Block", **kw)  # type: ignore[arg-type]


def _rules(phase: str, root: Path) -> list[Rule]:
    return {"none": [], "exact": [_rule("File", path=str(root / "secret"))],
            "pattern": [_rule("File", pattern=glob_to_regex(f"{root}/*secret*"))],
            "execname": [_rule("Process", exec_name="bwblocked")]}[phase]


def _measure(ns: NsShell, root: Path, opens: int, execs: int) -> tuple[float, float]:
    """(ns per open/close, us per exec) in the workload."""
    rc, out = ns.run(f"{root / 'openbench'} {root / 'plain'} {opens}", timeout=600)
    assert rc == 0, out
    per_open = float(out.strip().splitlines()[-1])
    loop = f'i=0; while [ $i -lt {execs} ]; do {root / "plaintrue"}; i=$((i+1)); done; echo done'
    t0 = time.perf_counter()
    rc, out = ns.run(loop, timeout=600)
    assert rc == 0 and out.strip().endswith("done"), out
    return per_open, (time.perf_counter() - t0) * 1e6 / execs


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--opens", type=int, default=20000)
    args.add_argument("--execs", type=int, default=300)
    opt = args.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bw-bench-pat-"))
    root.chmod(0o755)
    results: dict[str, list[tuple[float, float]]] = {p: [] for p in PHASES}
    verdicts: dict[str, int] = {p: 0 for p in PHASES}
    ns = NsShell()
    enforcer = FanotifyEnforcer()
    try:
        (root / "plain").write_text("p\n")
        (root / "secret").write_text("s\n")
        shutil.copy2("/usr/bin/true", root / "plaintrue")
        (root / "openbench.c").write_text(C_OPEN)
        subprocess.run(["gcc", "-O2", "-o", str(root / "openbench"), str(root / "openbench.c")], check=True)
        version = 0
        for _ in range(opt.rounds):
            for phase in PHASES:
                version += 1
                enforcer.apply(ruleset(version, a=(ns.mntns, _rules(phase, root))))
                before = enforcer.stats().get("allowed", 0) + enforcer.stats().get("denied", 0)
                results[phase].append(_measure(ns, root, opt.opens, opt.execs))
                verdicts[phase] += enforcer.stats().get("allowed", 0) + enforcer.stats().get("denied", 0) - before
    finally:
        enforcer.close()
        ns.close()
        shutil.rmtree(root, ignore_errors=True)
    base_open = min(r[0] for r in results["none"])
    base_exec = min(r[1] for r in results["none"])
    print(f"fanotify by-path judgement, {opt.rounds} rounds, min per phase; ratios against no enforcer")
    print(f"{'phase':10} {'open/close ns':>14} {'ratio':>7} {'exec us':>9} {'ratio':>7} {'verdicts':>9}")
    for phase in PHASES:
        o, e = min(r[0] for r in results[phase]), min(r[1] for r in results[phase])
        print(f"{phase:10} {o:14.0f} {o / base_open:6.2f}x {e:9.0f} {e / base_exec:6.2f}x {verdicts[phase]:9d}")
    if verdicts["pattern"] == 0 or verdicts["execname"] == 0 or verdicts["none"] != 0:
        print("INVALID: the by-path phases were not judged (or the baseline was)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""BPF-LSM vs fanotify vs no Bulwark, inside one kernel-lab guest boot (a kernel that runs BPF-LSM).

A workload (a shell in its own mount namespace) runs C loops; the same rules are loaded into the
BPF-LSM enforcer, then into the fanotify enforcer (in this process):
Process Block of a private binary, File Block of a private file, File readOnly Block of a private
directory (reads in it are judged and allowed). Rows, in ns per operation and as ratios against no
Bulwark measured in the same boot:

- open-unnamed: open/close of a file no rule names (what almost every open is)
- open-judged: open/close (read) of a file in the readOnly directory: judged, allowed
- exec: fork + exec of /usr/bin/true, which no rule names

Allowed operations that an enforcer nevertheless refused are counted and printed (``*_refused``).

Order: no Bulwark; BPF-LSM (its programs compile once, then ``--rounds`` measurements); BPF-LSM
closed; then ``--rounds`` x (no Bulwark, fanotify). Before measuring, each enforcer must refuse the
blocked exec and the write in the readOnly directory: if it never did (the thing measured never
ran), the script exits 1. Run as root in a guest, e.g.
``bash boot-debian-kernel.sh trixie 'cd /work/main && .venv/bin/python bench/lsm_guest.py'``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.kernel.nsutil import NsShell, block_exec, file_rule, private_copy, ruleset  # noqa: E402

C_LOOPS = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int c, char **v) {
    long n = atol(v[3]), failed = 0; double a = now();
    if (!strcmp(v[1], "open")) {
        for (long i = 0; i < n; i++) { int fd = open(v[2], O_RDONLY); if (fd < 0) failed++; else close(fd); }
    } else {
        for (long i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) { execl(v[2], v[2], (char *)0); _exit(127); }
            int st; waitpid(p, &st, 0); if (!WIFEXITED(st) || WEXITSTATUS(st)) failed++;
        }
    }
    printf("%.1f %ld\n", (now() - a) / n, failed);
    return 0;
}
"""
ROWS = ("open-unnamed", "open-judged", "exec")


class Bench:
    """The workload shell, its files and the loops."""

    def __init__(self, work: Path, n_open: int, n_exec: int) -> None:
        self.work, self.n_open, self.n_exec = work, n_open, n_exec
        (work / "ro").mkdir()
        (work / "plain").write_text("p\n")
        (work / "ro" / "doc").write_text("d\n")
        (work / "secret").write_text("s\n")
        self.blocked = private_copy("/usr/bin/true", work, "blocked")
        src = work / "loops.c"
        src.write_text(C_LOOPS)
        self.loops = str(work / "loops")
        subprocess.run(["gcc", "-O2", "-o", self.loops, str(src)], check=True)
        self.shell = NsShell()
        self.failures: dict[str, int] = {}  # operations refused although allowed: printed, not hidden

    def rules(self) -> object:
        """The same rule set for every enforcer."""
        return ruleset(1, w=(self.shell.mntns, [
            block_exec(self.blocked), file_rule(path=str(self.work / "secret")),
            file_rule(dir=f"{self.work}/ro/", recursive=True, read_only=True)]))

    def enforced(self) -> bool:
        """Whether the blocked exec and the readOnly write are refused, and reads still allowed."""
        exec_rc = self.shell.run(self.blocked)[0]
        write_rc = self.shell.run(f"echo x >> {self.work}/ro/doc")[0]
        read = self.shell.run(f"cat {self.work}/ro/doc")
        return exec_rc != 0 and write_rc != 0 and read == (0, "d")

    def measure(self) -> dict[str, float]:
        """ns per operation of each row, in the workload."""
        out: dict[str, float] = {}
        for row, cmd in (("open-unnamed", f"{self.loops} open {self.work}/plain {self.n_open}"),
                         ("open-judged", f"{self.loops} open {self.work}/ro/doc {self.n_open}"),
                         ("exec", f"{self.loops} exec /usr/bin/true {self.n_exec}")):
            rc, text = self.shell.run(cmd, timeout=600)
            if rc != 0:
                raise RuntimeError(f"{row} loop failed: rc={rc} {text}")
            ns, failed = text.strip().splitlines()[-1].split()
            out[row] = float(ns)
            self.failures[row] = self.failures.get(row, 0) + int(failed)
        return out

    def close(self) -> None:
        """Stop the workload shell."""
        self.shell.close()


def _median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {row: statistics.median(s[row] for s in samples) for row in ROWS}


def main() -> int:
    """Measure, print one JSON line per phase and row, and a table; 1 when an enforcer never ran."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--opens", type=int, default=20000)
    ap.add_argument("--execs", type=int, default=300)
    args = ap.parse_args()
    from services.enforcer.bpflsm import BpfLsmEnforcer
    from services.enforcer.fanotify.enforcer import FanotifyEnforcer

    samples: dict[str, list[dict[str, float]]] = {"none": [], "BPFLSM": [], "Fanotify": []}
    failures: dict[str, dict[str, int]] = {"BPFLSM": {}, "Fanotify": {}}
    with tempfile.TemporaryDirectory(prefix="bw-lsm-bench-") as tmp:
        bench = Bench(Path(tmp), args.opens, args.execs)
        try:
            samples["none"].append(bench.measure())
            lsm = BpfLsmEnforcer(btf_tree=Path(tmp) / "bcc-btf")
            try:
                ok, why = lsm.probe()
                if not ok:
                    print(f"BPF-LSM does not load here: {why}", file=sys.stderr)
                    return 1
                lsm.apply(bench.rules())
                if not bench.enforced():
                    print("BPF-LSM never refused the blocked operations", file=sys.stderr)
                    return 1
                bench.failures = {}
                for _ in range(args.rounds):
                    samples["BPFLSM"].append(bench.measure())
                failures["BPFLSM"] = bench.failures
            finally:
                lsm.close()
            for _ in range(args.rounds):
                samples["none"].append(bench.measure())
                fan = FanotifyEnforcer()
                try:
                    fan.apply(bench.rules())
                    if not bench.enforced():
                        print("fanotify never refused the blocked operations", file=sys.stderr)
                        return 1
                    bench.failures = {}
                    samples["Fanotify"].append(bench.measure())
                    for row, n in bench.failures.items():
                        failures["Fanotify"][row] = failures["Fanotify"].get(row, 0) + n
                finally:
                    fan.close()
        finally:
            bench.close()
    base = _median(samples["none"])
    kernel = Path("/proc/sys/kernel/osrelease").read_text().strip()
    print(f"kernel {kernel}; medians of {len(samples['none'])} no-Bulwark and {args.rounds} enforcer runs")
    print(f"{'row':14} {'none ns':>10} {'BPFLSM ns':>10} {'ratio':>7} {'fanotify ns':>12} {'ratio':>7}")
    lsm_m, fan_m = _median(samples["BPFLSM"]), _median(samples["Fanotify"])
    for row in ROWS:
        print(f"{row:14} {base[row]:10.0f} {lsm_m[row]:10.0f} {lsm_m[row] / base[row]:7.2f} "
              f"{fan_m[row]:12.0f} {fan_m[row] / base[row]:7.2f}")
        print(json.dumps({"kernel": kernel, "row": row, "none_ns": base[row], "bpflsm_ns": lsm_m[row],
                          "bpflsm_ratio": round(lsm_m[row] / base[row], 3), "fanotify_ns": fan_m[row],
                          "fanotify_ratio": round(fan_m[row] / base[row], 3),
                          "bpflsm_refused": failures["BPFLSM"].get(row, 0),
                          "fanotify_refused": failures["Fanotify"].get(row, 0)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

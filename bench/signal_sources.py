"""What fromSource costs the eBPF signal enforcer: socket()+close() in a selected workload, same run.

A workload (a shell in its own mount namespace) runs a C loop of ``socket(AF_INET, SOCK_STREAM)`` +
``close()`` (an allowed socket: the enforcer judges it and lets it be) and of
``socket(AF_UNIX, SOCK_STREAM)`` + ``close()``. Configurations, interleaved ``--rounds`` times:

- ``no Bulwark``: nothing loaded (the baseline of every ratio);
- ``rules``: the signal enforcer holds a Block udp rule for the workload (tcp and Unix sockets are
  looked up and allowed; no source: no path is read);
- ``rules + sources``: the same, plus a Block udp rule ``fromSource`` a program that never runs here:
  the namespace's verdicts now differ by program, so every socket() walks the loop's executable path
  (bpf/include/bw_lsm_path.h) and looks it up before the verdict.

INET sockets are judged by the cgroup sock_create program where it loads (this host), Unix sockets by the
``sys_enter_socket`` tracepoint. Per configuration the best (lowest) round: noise only ever adds. Run as
root: ``.venv/bin/python bench/signal_sources.py [--rounds 5] [--sockets 200000]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.schemas.rules import Rule  # noqa: E402
from tests.kernel.nsutil import NsShell, ruleset  # noqa: E402

C_SOCKETS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int c, char **v) {
    int family = atoi(v[1]); long n = atol(v[2]); struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) { int fd = socket(family, SOCK_STREAM, 0); if (fd < 0) return 1; close(fd); }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""
ROWS = {"socket+close, AF_INET tcp (ns/op)": 2, "socket+close, AF_UNIX (ns/op)": 1}


def _rule(**kw: object) -> Rule:
    return Rule(policy="bench", policy_kind="KubeArmorPolicy", policy_namespace="bench", operation="Network",
                action="Block", protocol="udp", **kw)  # type: ignore[arg-type]


def measure(ns: NsShell, loop: Path, sockets: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for row, family in ROWS.items():
        rc, text = ns.run(f"{loop} {family} {sockets}", timeout=300)
        assert rc == 0, text
        out[row] = float(text.strip().splitlines()[-1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sockets", type=int, default=200_000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    from services.enforcer.signal.enforcer import SignalEnforcer

    tmp = Path(tempfile.mkdtemp(prefix="bw-bench-sigsrc-"))
    tmp.chmod(0o755)
    ns = NsShell()
    try:
        (tmp / "loop.c").write_text(C_SOCKETS)
        loop = tmp / "socket-loop"
        subprocess.run(["gcc", "-O2", "-o", str(loop), str(tmp / "loop.c")], check=True)
        configs = {
            "no Bulwark": None,
            "rules": ruleset(1, w=(ns.mntns, [_rule()])),
            "rules + sources": ruleset(1, w=(ns.mntns, [_rule(), _rule(from_source=[{"path": "/usr/bin/dig"}])])),
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        walked = 0
        for i in range(args.rounds):
            for name, rs in configs.items():
                if rs is None:
                    runs[name].append(measure(ns, loop, args.sockets))
                    continue
                enf = SignalEnforcer(btf_tree=tmp / "bcc-btf")
                try:
                    enf.apply(rs)
                    if name == "rules + sources":
                        walked = enf.stats()["sources"]
                    runs[name].append(measure(ns, loop, args.sockets))
                finally:
                    enf.close()
            print(f"  round {i + 1}/{args.rounds} done", file=sys.stderr)
        best = {name: {row: min(r[row] for r in rs_) for row in ROWS} for name, rs_ in runs.items()}
        base = best["no Bulwark"]
        print(f"\nsignal enforcer, fromSource ({args.rounds} interleaved rounds, {args.sockets} sockets each; best "
              f"round; ratio = configuration / no Bulwark, same run; sources in the kernel table: {walked})")
        print(f"{'metric':38}" + "".join(f"{name:>26}" for name in best))
        for row in ROWS:
            print(f"{row:38}" + "".join(f"{best[n][row]:>16.1f} ({best[n][row] / base[row]:5.2f}x)" for n in best))
        return 0
    finally:
        ns.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

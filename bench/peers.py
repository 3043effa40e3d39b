"""Bulwark against auditd and fapolicyd enforcing one policy set: cost to the same workloads, and what each reports.

What each of the three costs the same workloads when it enforces the same KubeArmor policy set, and
what each reports (and stops) of the same violations.

One policy set (bench/peer_rules.py: a YAML List of two KubeArmorPolicy, Block on two files, one
directory tree and two programs, all under the bench's private tmpfs) is turned into:

- auditd: ``-w PATH -p rwa`` per file and directory, ``-w PROGRAM -p x`` per program (key bwpeers);
  auditd itself runs in the foreground (``-n``) with a private config directory and log
- fapolicyd: ``deny perm=any`` per file and directory, ``deny perm=execute`` per program, then
  ``allow perm=any all : all``; no trust rule. It runs in the foreground (``--debug-deny``: each
  denial on stderr) with ``allow_filesystem_mark = 1`` (its mount marks would not see a process in
  another mount namespace, which every workload here is), in a private mount namespace where only the
  root file system and the bench's tmpfs are left of the types it watches, so it marks nothing else
- Bulwark: ``bulwark up`` (private ports and data), the set applied as written, the workload started
  by ``bulwark run`` (its own mount, PID and UTS namespaces): monitor + enforcers act on it alone.
  Twice: ``bulwark`` with visibility "none" (the monitor emits only what the rules name: it reports
  what the peers report), ``bulwark-default`` with its default visibility (every process, file,
  network and capability event of the workload logged as well: telemetry the peers do not give)

The peers' rules come from the rules Bulwark's compiler makes of the set, so all three judge the same
paths; a rule they cannot express exactly is refused.

Workloads, in one shell per phase (``unshare --mount --pid --uts --fork`` with no peer, auditd or
fapolicyd; ``bulwark run`` with Bulwark), each run timed inside: open/close of an unruled file
(bench/monitor_common.py's C load generator, ns per pair), fork+exec of /bin/true (the same, ns per
exec), the churn loop of bench/realistic_overhead.py (tar, sha256sum, git, gcc -O0 on small files;
wall and CPU seconds), and with ``--build`` its C build (Brotli, gcc -O2, make -j2).

Interleaving as in realistic_overhead.py: no peer (A), then per round each configuration (B) followed
by A, the order reversed every other round; the first run of a phase is a warm-up. Per round:
ratio = median(B runs) / median(the A runs either side); per configuration and metric: the median of
the rounds' ratios, their min-max and a bootstrap 95% interval of that median. ``aa`` (no peer as B)
is the noise floor. Each B phase starts its peer and stops it afterwards (rules removed).

Every phase first runs the violations once in the same kind of shell: a read of each ruled file
(and of a file in the ruled tree), an exec of each ruled program. Seen = an audit event with the key
naming the path / a fapolicyd denial line naming it / a Bulwark alert with it as Resource (waited
for up to ``--alert-wait`` s; "alerts after s" is how long the last one took); stopped = the access
failed. With no peer every violation must succeed. Then the timing runs, during which no
configuration may report a ruled path (for Bulwark: none of the alerts arrived by the runs' end).

Exits 1 when the measurement is invalid: a peer did not start or check out, a violation was not
exercised, a peer reported more than happened, reported ruled paths during the timing runs, answered
differently across rounds, or never reported anything; or when the host is not as it was found.
Installs auditd and fapolicyd from Debian if missing (their services neither started nor left
enabled). Restores on failure and on SIGINT/SIGTERM/SIGHUP: audit rules and enabled flag as before,
/etc/fapolicyd and fapolicyd's run-time files as before, every daemon stopped by its pid.

The defaults (5 rounds, 3 runs per phase, all five configurations) take about 7 minutes on the
2-core VM, a third of it starting the two Bulwark stacks. Run as root, under the suite lock (nothing
heavy alongside: fapolicyd answers every open and exec on the host while its phases run):
``flock /tmp/bw-suite.lock .venv/bin/python bench/peers.py [--rounds 5] [--runs 3] [--configs ...]``
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor_common import BTF_TREE, build_loadgen
from peer_daemons import ETC, Auditd, Fapolicyd, HostFiles, PeerError, audit_rules, audit_status, ensure_packages
from peer_rules import (
    AUDIT_KEY,
    LABEL,
    NAMESPACE,
    Targets,
    Violation,
    audit_watches,
    fapolicyd_rules,
    policy_set,
    targets_of,
    violations,
)
from peer_stats import NONE, Phase, Probe, Sample, judge, summarise, summary_line, table
from realistic_overhead import BUILD, WORKLOADS, _proc_cpu, code_state, prepare_build, round_ratios, workspace

CONFIGS = {
    "aa": "A/A: no peer vs no peer (the noise floor)",
    "auditd": "auditd: -w watches on the ruled files, directory and programs",
    "fapolicyd": "fapolicyd: deny rules on the ruled paths, then allow all",
    "bulwark": "Bulwark, visibility none (it reports what its rules name, as the peers do)",
    "bulwark-default": "Bulwark, its default visibility (process,file,network,capabilities: every event logged)",
}
VISIBILITY = {"bulwark": "none", "bulwark-default": ""}  # BULWARK_VISIBILITY_CONTAINERS ("": its default)
UNSHARE = ["unshare", "--mount", "--pid", "--uts", "--fork", "--mount-proc", "--kill-child"]
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
BIN = Path(sys.executable).parent


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: unwind (restoring everything) and exit 130."""


def _interrupt(signum: int, _frame: Any) -> None:
    for sig in SIGNALS:  # the clean-up must not be interrupted in turn
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


# -- the bench's files --------------------------------------------------------------------------------
@dataclass
class Bench:
    """The workspace, the policy set, what it rules, and the scripts every phase runs."""

    ws: Any  # realistic_overhead.Workspace
    tmp: Path  # outside the workspace: peers' logs and the host files' backups
    policy_file: Path
    targets: Targets
    violations: list[Violation]
    timing: Path
    probe: Path
    args: argparse.Namespace

    @property
    def root(self) -> str:
        """The workspace's root: everything the policy set names is under it."""
        return str(self.ws.root)


def make_ruled(targets: Targets, vs: list[Violation]) -> None:
    """The ruled files, a file in each ruled directory, and the ruled programs (copies of true)."""
    for d in targets.dirs:
        Path(d).mkdir(parents=True, exist_ok=True)
    for v in vs:
        Path(v.path).parent.mkdir(parents=True, exist_ok=True)
        if v.kind == "exec":
            shutil.copy2("/usr/bin/true", v.path)
        else:
            Path(v.path).write_text("ruled\n")


def timing_script(root: Path, loadgen: str, runner: str, churn: str, args: argparse.Namespace, build: str) -> str:
    """One phase's timing runs (run 0 is the warm-up): ``r<i> <metric> <values>`` lines."""
    last = root / "last.out"
    steps = [f'  v=$({loadgen} openclose {args.opens} {root}/plain); echo "r$i open/close $v"',
             f'  v=$({loadgen} exec {args.execs}); echo "r$i fork+exec $v"',
             f'  {runner} {churn} > {last}; echo "r$i churn $(tail -n 1 {last})"']
    if build:
        steps.append(f'  {runner} {build} > {last}; echo "r$i build $(tail -n 1 {last})"')
    return "set -e\ni=0\nwhile [ $i -le {runs} ]; do\n{steps}\n  i=$((i+1))\ndone\n".format(
        runs=args.runs, steps="\n".join(steps))


def probe_script(vs: list[Violation]) -> str:
    """Each violation once: ``v<i> <exit status>``."""
    lines = []
    for i, v in enumerate(vs):
        cmd = f"cat {v.path}" if v.kind == "open" else v.path
        lines.append(f'{cmd} > /dev/null 2>&1; echo "v{i} $?"')
    return "\n".join(lines) + "\n"


def parse_timing(out: str) -> list[Sample]:
    """The measured runs (the warm-up dropped) as metric -> value."""
    runs: dict[int, Sample] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[0].startswith("r") or not parts[0][1:].isdigit():
            continue
        sample = runs.setdefault(int(parts[0][1:]), {})
        if parts[1] in ("churn", "build"):
            wall_ns, user_us, sys_us = (int(x) for x in parts[2:5])
            sample[f"{parts[1]} wall"] = wall_ns / 1e9
            sample[f"{parts[1]} cpu"] = (user_us + sys_us) / 1e6
        else:
            sample[parts[1]] = float(parts[2])
    return [runs[i] for i in sorted(runs) if i > 0]


# -- configurations -----------------------------------------------------------------------------------
class Config:
    """A loaded configuration: how a phase's shell is started, and what the configuration reported."""

    def __init__(self, name: str, wrapper: list[str], env: dict[str, str] | None = None) -> None:
        self.name, self.wrapper, self.env = name, wrapper, env
        self.counters: dict[str, float] = {}

    def pids(self) -> list[int]:
        """Its own processes, whose CPU is counted."""
        return []

    def mark_probe(self) -> None:
        """The violations are about to run."""

    def seen(self, vs: list[Violation]) -> dict[Violation, int]:
        """After the violations ran: its reports of each (waiting for them a while)."""
        return {}

    def mark_runs(self) -> None:
        """The timing runs are about to start."""

    def during_runs(self) -> int:
        """After the timing runs: its reports of ruled paths since mark_runs (the runs touch none)."""
        return 0


class AuditdConfig(Config):
    """auditd's events with our key, told apart by serial from markers logged between the steps."""

    def __init__(self, auditd: Auditd) -> None:
        super().__init__("auditd", UNSHARE)
        self.auditd = auditd
        self.at_probe = self.at_runs = 0

    def pids(self) -> list[int]:
        return self.auditd.cpu_pids()

    def _ours(self, after: int, before: int) -> list[Any]:
        return [ev for ev in self.auditd.events() if ev.key == AUDIT_KEY and after < ev.serial < before]

    def mark_probe(self) -> None:
        self.at_probe = self.auditd.mark("probe")

    def seen(self, vs: list[Violation]) -> dict[Violation, int]:
        events = self._ours(self.at_probe, self.auditd.mark("probed"))  # every event of the probe is logged
        return {v: sum(v.path in ev.names for ev in events) for v in vs}

    def mark_runs(self) -> None:
        self.at_runs = self.auditd.mark("runs")

    def during_runs(self) -> int:
        return len(self._ours(self.at_runs, self.auditd.mark("ran")))


class FapolicydConfig(Config):
    """fapolicyd's denial lines naming the path, told apart by their offset in its stderr."""

    def __init__(self, fapd: Fapolicyd) -> None:
        super().__init__("fapolicyd", UNSHARE)
        self.fapd = fapd
        self.at_probe = self.at_runs = 0

    def pids(self) -> list[int]:
        return self.fapd.cpu_pids()

    def mark_probe(self) -> None:
        self.at_probe = self.fapd.offset()

    def seen(self, vs: list[Violation]) -> dict[Violation, int]:
        deadline = time.monotonic() + 3
        while True:
            lines = [line.split() for line in self.fapd.denials(self.at_probe)]
            seen = {v: sum(f"path={v.path}" in words or f"file={v.path}" in words for words in lines) for v in vs}
            if all(seen.values()) or time.monotonic() > deadline:
                return seen
            time.sleep(0.2)

    def mark_runs(self) -> None:
        self.at_runs = self.fapd.offset()

    def during_runs(self) -> int:
        return len(self.fapd.denials(self.at_runs))


class BulwarkConfig(Config):
    """Bulwark's alerts in the bench's namespace, by Resource."""

    def __init__(self, name: str, stack: Any, wait: float) -> None:
        super().__init__(name, [str(BIN / "bulwark"), "run", "--namespace", NAMESPACE, "--label",
                                f"{LABEL[0]}={LABEL[1]}", "--"], stack.env)
        self.stack, self.wait = stack, wait
        self.before: list[dict[str, Any]] = []
        self.n_runs = 0

    def alerts(self) -> list[dict[str, Any]]:
        import httpx

        resp = httpx.get(f"{self.stack.rest_url}/api/v1/alerts", params={"namespace": NAMESPACE, "limit": 10000},
                         timeout=10)
        resp.raise_for_status()
        return list(resp.json())

    def pids(self) -> list[int]:
        from tests.e2e.stack import _descendants

        return sorted(_descendants(self.stack.proc.pid))

    def mark_probe(self) -> None:
        self.before = self.alerts()

    def seen(self, vs: list[Violation]) -> dict[Violation, int]:
        def count(alerts: list[dict[str, Any]], v: Violation) -> int:
            return sum(str(a.get("Resource", "")).split(" ")[0] == v.path for a in alerts)

        t0 = time.monotonic()
        while True:
            now = self.alerts()
            seen = {v: count(now, v) - count(self.before, v) for v in vs}
            if all(seen.values()) or time.monotonic() > t0 + self.wait:
                break
            time.sleep(0.1)
        self.counters["alerts after s"] = time.monotonic() - t0  # from the probe's end to its last alert
        time.sleep(1)  # anything reported twice arrives too
        now = self.alerts()
        return {v: count(now, v) - count(self.before, v) for v in vs}

    def mark_runs(self) -> None:
        self.n_runs = len(self.alerts())

    def during_runs(self) -> int:
        return len(self.alerts()) - self.n_runs  # what has arrived by then (the feeder may still be behind)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP held back while a clean-up runs (delivered, and acted on, after it)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def cleanup(problems: list[str], *steps: Callable[[], list[str]]) -> None:
    """Run every clean-up step, shielded, even when an earlier one failed (its failure is a problem)."""
    with shielded():
        for step in steps:
            try:
                problems += step()
            except Exception as exc:
                problems.append(f"clean-up: {type(exc).__name__}: {exc}")


def _fapolicyd_counts(fapd: Fapolicyd, cfg: Config) -> list[str]:
    """Its shutdown report's counts: decisions, and denials checked against its stderr."""
    total, reported = len(fapd.denials(0)), fapd.report_count("Denied accesses")
    allowed = fapd.report_count("Allowed accesses")
    if allowed is not None:
        cfg.counters["decisions"] = allowed + (reported or 0)
    if reported is not None and reported != total:
        return [f"fapolicyd: its report says {reported} denials, its stderr has {total} (counts disagree)"]
    return []


@contextlib.contextmanager
def load(name: str, bench: Bench, problems: list[str]) -> Iterator[Config]:
    """Start configuration ``name`` for one phase; stop it and put the host back afterwards (problems
    doing so are appended to ``problems``)."""
    if name in (NONE, "aa"):
        yield Config(name, UNSHARE)
        return
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=bench.tmp))
    (work / "backup").mkdir()
    files = HostFiles(work / "backup")
    if name == "auditd":
        auditd = Auditd(work, audit_watches(bench.targets), bench.root)
        try:
            auditd.start(files)
            yield AuditdConfig(auditd)
        finally:
            cleanup(problems, auditd.stop, files.restore)
    elif name == "fapolicyd":
        keep = {os.stat("/").st_dev, os.stat(bench.root).st_dev}
        fapd = Fapolicyd(work, fapolicyd_rules(bench.targets), bench.root, keep)
        cfg = FapolicydConfig(fapd)
        try:
            fapd.start(files, bench.targets.files[0])
            yield cfg
        finally:
            cleanup(problems, fapd.stop, files.restore, lambda: _fapolicyd_counts(fapd, cfg))
    else:
        from tests.e2e.stack import start_stack

        env = {"BULWARK_VISIBILITY_CONTAINERS": VISIBILITY[name]} if VISIBILITY[name] else {}
        stack = start_stack(work / "data", node="bw-peers", btf_tree=Path(BTF_TREE), extra_env=env)

        def stop() -> list[str]:
            rc = stack.stop()
            return [] if rc == 0 else [f"bulwark up exited with {rc}"]

        try:
            if stack.cli("status", "--wait", "240", timeout=270).returncode != 0:
                raise PeerError("bulwark up did not become healthy:\n" + stack.logs()[-3000:])
            applied = stack.cli("apply", "-f", str(bench.policy_file))
            if applied.returncode != 0:
                raise PeerError(f"bulwark apply failed: {applied.stderr.strip()}")
            yield BulwarkConfig(name, stack, bench.args.alert_wait)
        finally:
            cleanup(problems, stop)


# -- phases and rounds --------------------------------------------------------------------------------
def _cpu(pids: list[int]) -> float:
    return sum(_proc_cpu(pid) for pid in pids)


def wrapped(cfg: Config, script: Path, timeout: float) -> str:
    """Run ``sh script`` in the configuration's shell; its output (RuntimeError when it failed)."""
    env = cfg.env if cfg.env is not None else dict(os.environ)
    res = subprocess.run([*cfg.wrapper, "/bin/sh", str(script)], env=env, capture_output=True, text=True,
                         timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{cfg.name}: {script.name} failed (exit {res.returncode}): "
                           f"{(res.stdout + res.stderr)[-1500:]}")
    return res.stdout


def phase(cfg: Config, bench: Bench) -> tuple[list[Sample], Probe]:
    """The violations once (what the configuration reported of each), then the timing runs (and
    whether it reported ruled paths during them): the samples and the probe."""
    cfg.mark_probe()
    rcs = {}
    for line in wrapped(cfg, bench.probe, timeout=300).splitlines():
        tag, _, rc = line.partition(" ")
        if tag.startswith("v") and tag[1:].isdigit() and rc.strip().isdigit():
            rcs[bench.violations[int(tag[1:])]] = int(rc)
    seen = cfg.seen(bench.violations)
    cfg.mark_runs()
    pids = cfg.pids()
    cpu0 = _cpu(pids)
    samples = parse_timing(wrapped(cfg, bench.timing, timeout=1800))
    cfg.counters["peer cpu s"] = _cpu(pids) - cpu0
    if len(samples) != bench.args.runs or any(len(s) != len(samples[0]) for s in samples):
        raise RuntimeError(f"{cfg.name}: timing output incomplete: {samples}")
    return samples, Probe(cfg.name, rcs, seen, cfg.during_runs())


@dataclass
class Results:
    """Per configuration its (B, A either side) phases, counters and load times; every probe."""

    phases: dict[str, list[Phase]] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)
    counters: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    load_s: dict[str, list[float]] = field(default_factory=dict)
    baselines: list[list[Sample]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def a_phase(bench: Bench, res: Results) -> list[Sample]:
    """A no-peer phase (its probe is the "none" column)."""
    with load(NONE, bench, res.problems) as cfg:
        samples, probe = phase(cfg, bench)
    res.probes.append(probe)
    res.baselines.append(samples)
    return samples


def b_phase(name: str, bench: Bench, res: Results) -> list[Sample]:
    """Load ``name``, run its phase, unload it."""
    t0 = time.monotonic()
    with load(name, bench, res.problems) as cfg:
        res.load_s.setdefault(name, []).append(time.monotonic() - t0)
        samples, probe = phase(cfg, bench)
    res.probes.append(probe)
    res.counters.setdefault(name, []).append(dict(cfg.counters))
    return samples


def run_rounds(bench: Bench, names: list[str], rounds: int) -> Results:
    """A, then per round each configuration's B phase followed by an A phase (order reversed every
    other round): every B phase lies between two A phases."""
    res = Results()
    before = a_phase(bench, res)
    for rnd in range(rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            b = b_phase(name, bench, res)
            after = a_phase(bench, res)
            res.phases.setdefault(name, []).append((b, before + after))
            ratios = " ".join(f"{m} {round_ratios([(b, before + after)], m)[0]:.3f}" for m in b[0])
            print(f"  round {rnd + 1}/{rounds} {name:9s} {ratios}", file=sys.stderr, flush=True)
            before = after
    return res


# -- report -------------------------------------------------------------------------------------------
def report(bench: Bench, names: list[str], res: Results, elapsed: float) -> list[str]:
    """Print the ratios and the detection table; the problems that make the run invalid."""
    args = bench.args
    print(f"\npeers: {args.rounds} rounds, {args.runs} runs per phase (+1 warm-up), measuring took "
          f"{elapsed / 60:.1f} min; per run: {args.opens} open/close pairs, {args.execs} fork+exec, churn "
          f"{args.iterations} loops{', the C build' if args.build else ''}; files on tmpfs")
    metrics = list(res.baselines[0][0])
    every = [s for p in res.baselines for s in p]
    print(f"no-peer runs: {len(every)} in {len(res.baselines)} phases; medians "
          + ", ".join(f"{m} {statistics.median(s[m] for s in every):.4g}" for m in metrics)
          + "  (open/close, fork+exec: ns; wall, cpu: s)")
    width = max(len(m) for m in metrics)
    for name in names:
        print(f"\n{CONFIGS[name]}   ({len(res.phases[name])} rounds; loading it took "
              f"{statistics.median(res.load_s[name]):.1f} s, median)")
        print(f"  {'metric':{width}s} {'ratio':>6s}  {'min-max':>11s}  {'95% CI':>16s}  per-round ratios")
        for metric in metrics:
            print(summary_line(metric, summarise(res.phases[name], metric), width))
        counters = res.counters.get(name, [])
        keys = sorted({k for c in counters for k in c})
        if keys:
            print("  per phase (median): " + ", ".join(
                f"{k} {statistics.median(c.get(k, 0) for c in counters):.4g}" for k in keys))
    verdict = judge(res.probes, bench.violations)
    columns = [c for c in (NONE, *names) if any(p.config == c for p in res.probes)]
    print(f"\nviolations, once per phase (paths under {bench.root}); seen = audit event with key bwpeers "
          f"naming the path / fapolicyd denial line naming it / Bulwark alert with it as Resource; "
          f"stopped = the access failed")
    for row in table(verdict, bench.violations, columns, bench.root):
        print(row)
    return verdict.problems


# -- host state ---------------------------------------------------------------------------------------
def host_fingerprint() -> dict[str, str]:
    """What the bench must leave as it found: audit rules and status, fapolicyd's files, daemons."""
    out: dict[str, str] = {}
    status = audit_status()
    out["audit"] = f"enabled={status.get('enabled')} pid={status.get('pid')} rules={audit_rules()}"
    paths = [Path("/run/fapolicyd.pid"), Path("/run/fapolicyd.state"), Path("/run/auditd.pid"),
             Path("/var/log/fapolicyd-access.log")]
    for base in (ETC, Path("/var/lib/fapolicyd"), Path("/run/fapolicyd")):
        paths += [base, *sorted(base.rglob("*"))] if base.exists() else [base]
    for path in paths:
        if not (path.exists() or path.is_symlink()):
            out[str(path)] = "absent"
            continue
        st = path.lstat()
        kind = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() and not path.is_symlink() \
            else os.readlink(path) if path.is_symlink() else "dir" if path.is_dir() else "other"
        out[str(path)] = f"{kind} mode {st.st_mode & 0o7777:o} owner {st.st_uid}:{st.st_gid}"
    return out


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Keys whose value changed, appeared or went."""
    return [f"{k}: {before.get(k, 'absent')} -> {after.get(k, 'absent')}"
            for k in sorted(set(before) | set(after)) if before.get(k, "absent") != after.get(k, "absent")]


# -- main ---------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per phase (plus a warm-up)")
    parser.add_argument("--opens", type=int, default=50_000, help="open/close pairs per run")
    parser.add_argument("--execs", type=int, default=300, help="fork+execs per run")
    parser.add_argument("--iterations", type=int, default=5, help="churn loops per run")
    parser.add_argument("--build", action="store_true", help="also the C build (about 5 s a run, more under peers)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of: {', '.join(CONFIGS)}")
    parser.add_argument("--alert-wait", type=float, default=180.0,
                        help="seconds to wait for Bulwark's alerts of the violations (behind the runs' events)")
    return parser.parse_args()


def setup(ws: Any, tmp: Path, args: argparse.Namespace) -> Bench:
    """The policy set, its targets and violations, the ruled files, the load generator and scripts."""
    from bulwark.simulate import load_policies

    root = str(ws.root)
    policy_file = ws.root / "policy-set.yaml"
    policy_file.write_text(policy_set(root))
    targets = targets_of(r for p in load_policies([str(policy_file)]) for r in p.rules)
    vs = violations(targets)
    make_ruled(targets, vs)
    loadgen = build_loadgen(ws.root)
    build = ""
    if args.build:
        fields = prepare_build(ws.root)
        (ws.root / "build.sh").write_text(BUILD.format(w=root, iterations=1, reads="", **fields))
        build = str(ws.root / "build.sh")
    timing, probe = ws.root / "timing.sh", ws.root / "probe.sh"
    timing.write_text(timing_script(ws.root, loadgen, ws.runner, ws.script, args, build))
    probe.write_text(probe_script(vs))
    return Bench(ws, tmp, policy_file, targets, vs, timing, probe, args)


def measure(args: argparse.Namespace, names: list[str]) -> tuple[list[str], int]:
    """Set up, run the rounds, report; (problems, exit status)."""
    tmp = Path(tempfile.mkdtemp(prefix="bw-peers-"))
    try:
        with workspace(args.iterations, on_disk=False, judged_reads=False, workload=WORKLOADS["churn"]) as ws:
            bench = setup(ws, tmp, args)
            print(f"policy set: {len(bench.targets.files)} files, {len(bench.targets.dirs)} directory tree, "
                  f"{len(bench.targets.programs)} programs under {bench.root}; {len(bench.violations)} violations")
            t0 = time.monotonic()
            res = run_rounds(bench, names, args.rounds)
            problems = res.problems + report(bench, names, res, time.monotonic() - t0)
        return problems, 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    args = parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    if not names or any(n not in CONFIGS for n in names):
        print(f"--configs: a comma list of {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    print(code_state())
    fresh = ensure_packages(["auditd", "fapolicyd"])
    if fresh:
        print(f"installed from Debian: {', '.join(fresh)} (services neither started nor enabled)")
    if any(n in VISIBILITY for n in names):
        from shared.bpf.headers import ensure_btf_tree

        ensure_btf_tree(Path(BTF_TREE))
    before = host_fingerprint()
    for sig in SIGNALS:
        signal.signal(sig, _interrupt)
    status = 0
    problems: list[str] = []
    try:
        problems, status = measure(args, names)
    except Interrupted as exc:
        print(f"\ninterrupted by signal {exc.args[0]}: everything stopped and put back", file=sys.stderr)
        status = 130
    except (PeerError, RuntimeError, subprocess.TimeoutExpired) as exc:
        problems = [f"{type(exc).__name__}: {exc}"]
    finally:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        changed = differences(before, host_fingerprint())
    if changed:
        problems.append("the host is not as it was found: " + "; ".join(changed))
    print(f"\nafterwards: host as found: {'no' if changed else 'yes'} (audit rules and status, /etc/fapolicyd, "
          f"fapolicyd's and auditd's run-time files)")
    if problems:
        print("INVALID:\n  " + "\n  ".join(problems))
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())

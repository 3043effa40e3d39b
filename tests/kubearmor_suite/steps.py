"""KubeArmor's Ginkgo helpers, as steps run against the Bulwark stack.

Each step is what one call of KubeArmor's ``tests/util`` did in a spec:

* :class:`Apply` — ``K8sApplyFile``/``K8sApply`` of a policy file: ``bulwark apply -f``, then wait (no
  sleep) until the node's rule set holds its policies and the enforcer has applied it.
* :class:`Deploy` — ``K8sApply`` of a deployment in the middle of a spec: start the pod, wait until the
  enforcer covers it.
* :class:`Watch` — ``KarmorLogStart(filter, ns, operation, pod)``: from now on, ``Alert``/``Log``/
  ``NoAlert`` read what Bulwark stored (REST ``/api/v1/alerts`` and ``/logs``) after this point, for
  that namespace, operation and pod, oldest first; a matched record and everything before it is
  consumed, as reading KubeArmor's event channel consumed them.
* :class:`Run` — ``AssertCommand``/``K8sExecInPod[WithContainer]``: ``docker exec <container> bash -c
  CMD`` (stdout and stderr together, as the TTY KubeArmor's exec asks for gives them); ``eventual``
  retries until the output matches (Gomega's ``Eventually``), with a deadline.
* :class:`Alert`/:class:`Log` — ``KarmorGetTargetAlert``/``KarmorGetTargetLogs`` with ``Found`` true:
  KubeArmor's field rules (``getAlertWithInfo``): PolicyName, Severity, Action, Result, Message,
  NamespaceName exact; Resource, Source, Data, ContainerName substrings; empty fields unchecked.
* :class:`NoAlert` — ``Found`` false.

Instead of waiting out KubeArmor's timeouts, ``Alert``/``Log``/``NoAlert`` decide once a flush marker
(an exec of a path that does not exist, in a container of its own that no policy selects) that runs
after the spec's commands has been stored: the monitor's ring buffer, its batches, the enforcer's kill
reports (published within 50 ms) and the feeder keep events in order, so whatever the commands caused
is stored by then.
* :class:`Note` — a Kubernetes-only step with no Bulwark equivalent, recorded with what stands in for it.

One deliberate equivalence: KubeArmor's enforcers (AppArmor, BPF-LSM) refuse with EACCES
("Permission denied"); fanotify permission events can only refuse with EPERM ("Operation not
permitted"). Wherever a spec expects "Permission denied" (in a command's output or an alert's
Result), either refusal is accepted. A process *killed* instead of refused is not a refusal.
"""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kubearmor_suite.cluster import Cluster, Pod

__all__ = ["Step", "Apply", "Deploy", "Watch", "Run", "Alert", "NoAlert", "Log", "LogOps", "Note", "Re", "Has",
           "Not", "Matcher", "SpecRun", "DENIED", "EXACT", "CONTAINS", "record_matches", "StepFailed"]

DENIED = "Permission denied"
_REFUSALS = ("Permission denied", "Operation not permitted")
EXACT = ("PolicyName", "Severity", "Action", "Result", "Message", "NamespaceName", "Type", "Operation")
CONTAINS = ("Resource", "Source", "Data", "ContainerName")
RUN_EVENTUALLY = 10.0  # Gomega's Eventually in AssertCommand


class StepFailed(AssertionError):
    """A step's expectation did not hold."""


def _widen(pattern: str) -> str:
    return pattern.replace(DENIED, "(?:Permission denied|Operation not permitted)")


class Matcher:
    def __call__(self, out: str) -> bool:
        raise NotImplementedError

    def __str__(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Re(Matcher):
    """Gomega ``MatchRegexp`` (a search)."""

    pattern: str

    def __call__(self, out: str) -> bool:
        return re.search(_widen(self.pattern), out) is not None

    def __str__(self) -> str:
        return f"MatchRegexp({self.pattern!r})"


@dataclass(frozen=True)
class Has(Matcher):
    """Gomega ``ContainSubstring``."""

    text: str

    def __call__(self, out: str) -> bool:
        if DENIED in self.text:
            return any(self.text.replace(DENIED, r) in out for r in _REFUSALS)
        return self.text in out

    def __str__(self) -> str:
        return f"ContainSubstring({self.text!r})"


@dataclass(frozen=True)
class Not(Matcher):
    inner: Matcher

    def __call__(self, out: str) -> bool:
        return not self.inner(out)

    def __str__(self) -> str:
        return f"Not({self.inner})"


ANY = Re(".*")


class Step:
    def run(self, ctx: SpecRun) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Apply(Step):
    """A policy file, relative to the suite's directory."""

    path: str

    def run(self, ctx: SpecRun) -> None:
        ctx.cluster.apply(ctx.base / self.path)
        ctx.say(f"applied {self.path}")


@dataclass(frozen=True)
class Deploy(Step):
    pod: Pod

    def run(self, ctx: SpecRun) -> None:
        ctx.cluster.ensure(self.pod)
        ctx.say(f"deployed {self.pod.key}")


@dataclass(frozen=True)
class Watch(Step):
    """``KarmorLogStart(filter, namespace, operation, pod)``; ``pod`` is a pod key or ""."""

    filter: str
    namespace: str
    operation: str
    pod: str

    def run(self, ctx: SpecRun) -> None:
        ctx.watch(self)


@dataclass(frozen=True)
class Run(Step):
    pod: str
    cmd: str
    match: Matcher | None = ANY
    eventual: bool = False
    container: str | None = None
    shell: str = "bash"

    def run(self, ctx: SpecRun) -> None:
        container = ctx.cluster.container(self.pod, self.container)
        cmd = ctx.fill(self.cmd)
        deadline = time.monotonic() + (RUN_EVENTUALLY if self.eventual else 0.0)
        attempts = 0
        while True:
            attempts += 1
            rc, out = ctx.cluster.exec_in(container, cmd, shell=self.shell)
            if self.match is None or self.match(out):
                ctx.say(f"$ {cmd}  [{self.pod}{'/' + self.container if self.container else ''}] rc={rc}"
                        f"{f' after {attempts} tries' if attempts > 1 else ''}: {out.strip()[:160]!r}")
                return
            if time.monotonic() >= deadline:
                recent = ctx.cluster.records("alerts", pod=ctx.cluster.pod(self.pod).name,
                                             since=str(int(time.time()) - 30))
                raise StepFailed(f"`{cmd}` in {self.pod}{'/' + self.container if self.container else ''}: "
                                 f"output {out.strip()[:600]!r} (rc={rc}) does not satisfy {self.match}; the pod's "
                                 "latest alerts: " + "; ".join(_brief(r) for r in recent[-5:]))
            time.sleep(1.0)


@dataclass(frozen=True)
class Alert(Step):
    """``KarmorGetTargetAlert``: a stored alert with these fields (KubeArmor's names) must appear."""

    fields: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: SpecRun) -> None:
        ctx.expect("alerts", self.fields, found=True)


@dataclass(frozen=True)
class NoAlert(Step):
    fields: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: SpecRun) -> None:
        ctx.expect("alerts", self.fields, found=False)


@dataclass(frozen=True)
class Log(Step):
    """``KarmorGetTargetLogs``: Source and Resource substrings, Result exact."""

    fields: dict[str, Any] = field(default_factory=dict)

    def run(self, ctx: SpecRun) -> None:
        ctx.expect("logs", self.fields, found=True)


@dataclass(frozen=True)
class LogOps(Step):
    """``KarmorGetLogs`` + ``IsOperationsExpected`` (visibility): some logs since the watch, and their
    operations as KubeArmor's helper compares them (only when there are as many as expected)."""

    expected: tuple[str, ...]

    def run(self, ctx: SpecRun) -> None:
        logs = ctx.settled("logs")
        if not logs:
            raise StepFailed("no log at all since the watch")
        ops = sorted({str(r.get("Operation", "")).lower() for r in logs})
        if len(ops) == len(self.expected) and not set(ops) <= set(self.expected):
            raise StepFailed(f"log operations {ops}, expected {sorted(self.expected)}")
        ctx.say(f"{len(logs)} logs, operations {ops}")


@dataclass(frozen=True)
class Note(Step):
    """A Kubernetes-only step and what stands in for it here."""

    text: str

    def run(self, ctx: SpecRun) -> None:
        ctx.say(f"(translated) {self.text}")


def _result_ok(want: str, have: str) -> bool:
    if want == DENIED:
        return have in _REFUSALS
    return want == have


def record_matches(rec: dict[str, Any], want: dict[str, Any]) -> bool:
    """KubeArmor's getAlertWithInfo/getLogWithInfo: empty wanted fields are not checked."""
    for key, value in want.items():
        if value in ("", None):
            continue
        if key == "pushed":  # not held back by throttling (what a live watcher would have received)
            if bool(rec.get("Throttled")) == bool(value):
                return False
            continue
        have = str(rec.get(key, ""))
        if key == "Result":
            if not _result_ok(str(value), have):
                return False
        elif key in CONTAINS:
            if str(value) not in have:
                return False
        elif have != str(value):
            return False
    return True


class SpecRun:
    """One spec's state: the current watch, what it consumed, the transcript."""

    def __init__(self, cluster: Cluster, base: Path) -> None:
        self.cluster, self.base = cluster, base
        self.watching: Watch | None = None
        self.seen: set[str] = set()
        self.transcript: list[str] = []
        self.vars = {"rand": secrets.token_hex(6)}
        self.since = 0

    def say(self, line: str) -> None:
        self.transcript.append(line)

    def fill(self, text: str) -> str:
        return text.replace("{rand}", self.vars["rand"])

    def _scope(self, table: str) -> dict[str, str]:
        w = self.watching
        if w is None:
            raise StepFailed(f"{table} read before any KarmorLogStart")
        params = {"namespace": w.namespace, "since": str(self.since)}
        if w.pod:
            params["pod"] = self.cluster.pod(w.pod).name
        if w.operation:
            params["operation"] = w.operation
        return params

    def _fresh(self, table: str) -> list[dict[str, Any]]:
        return [r for r in self.cluster.records(table, **self._scope(table)) if r.get("EventID") not in self.seen]

    def watch(self, w: Watch) -> None:
        self.watching = w
        self.since = int(time.time()) - 2
        self.seen = {str(r.get("EventID")) for t in ("alerts", "logs")
                     for r in self.cluster.records(t, **self._scope(t))}
        self.say(f"watch {w.filter} ns={w.namespace or '*'} op={w.operation or '*'} pod={w.pod or '*'}")

    def settled(self, table: str) -> list[dict[str, Any]]:
        """The unconsumed records once everything before now is stored (see :meth:`Cluster.flush`)."""
        self.cluster.flush()
        return self._fresh(table)

    def _readable(self, table: str) -> bool:
        w = self.watching
        assert w is not None
        return w.filter == "all" or (w.filter == "policy") == (table == "alerts")

    def expect(self, table: str, want: dict[str, Any], found: bool) -> None:
        if not self._readable(table):  # KubeArmor's channel for this filter never carries them
            if found:
                raise StepFailed(f"{table} expected from a '{self.watching.filter if self.watching else ''}' watch")
            return
        if found:
            recs = self._fresh(table)
            if not any(record_matches(r, want) for r in recs):
                self.cluster.flush()
                _, recs = self.cluster.first_match(lambda: self._fresh(table), lambda r: record_matches(r, want))
            for i, r in enumerate(recs):
                if record_matches(r, want):
                    self.seen.update(str(x.get("EventID")) for x in recs[: i + 1])
                    self.say(f"found {table[:-1]} {_brief(r)}")
                    return
            raise StepFailed(f"no {table[:-1]} with {want} (all earlier events stored); got {len(recs)}: "
                             + "; ".join(_brief(r) for r in recs[-8:]))
        bad = [r for r in self.settled(table) if record_matches(r, want)]
        if bad:
            raise StepFailed(f"unexpected {table[:-1]} matching {want}: " + "; ".join(_brief(r) for r in bad[:5]))
        self.say(f"no {table[:-1]} matching {want}")


def _brief(r: dict[str, Any]) -> str:
    keys = ("PolicyName", "Severity", "Action", "Result", "Operation", "Resource", "Source", "ContainerName", "Type")
    return "{" + ", ".join(f"{k}={r.get(k)!r}" for k in keys if r.get(k) not in (None, "")) + "}"

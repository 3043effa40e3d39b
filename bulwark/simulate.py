"""``bulwark policy simulate``: what policies would decide for recorded accesses, before enforcing them.

Each input line is one JSON access::

    {"workload": {"kind": "container"|"host", "namespace", "labels", "container",
                  "namespace_annotations", "annotations", "node_labels"},
     "operation": "Process"|"File"|"Network"|"Capabilities"|"Syscall", "resource", "access",
     "source", "uid", "resource_owner_uid", "protocol", "capability", "syscall"}

and gets one JSON verdict line, in order: ``{"action", "policy", "type", "severity", "message",
"tags", "alert"}`` (``policy`` is ``DefaultPosture`` for a posture decision, null when nothing
matched), or ``{"error": ...}`` for a line that cannot be judged. The policies go through the same
admission, compiler and matcher as the services.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from bulwark.commands.policy import policy_files
from services.policy.compiler import compile_rules
from services.policy.model import Policy, to_policy
from services.policy.parser import parse_documents
from services.policy.posture import parse_posture_spec
from services.policy.validate import admit
from shared.bounded import InputError, read_text_file
from shared.errors import FieldError, ValidationFailed
from shared.matcher import DEFAULT_POSTURE, Access, Posture, decide
from shared.schemas.identity import Workload
from shared.schemas.rules import WorkloadRules

__all__ = ["load_policies", "Simulator", "simulate_lines", "run_simulate", "OPERATIONS", "add_history_arguments"]

OPERATIONS = ("Process", "File", "Network", "Capabilities", "Syscall")
_NO_MATCH: dict[str, Any] = {"action": "Allow", "policy": None, "type": None, "severity": "", "message": "", "tags": [],
             "alert": False}


def load_policies(targets: list[str]) -> list[Policy]:
    """Every policy in the files and directories ``targets``; ValidationFailed naming every problem."""
    policies: list[Policy] = []
    errors: list[FieldError] = []
    for target in targets:
        try:
            files = policy_files(target)
        except FileNotFoundError as exc:
            errors.append(FieldError("", str(exc), target))
            continue
        for path in files:
            try:
                docs = parse_documents(read_text_file(path), source=str(path))
            except ValidationFailed as exc:
                errors.extend(exc.errors)
                continue
            except InputError as exc:
                errors.append(FieldError("", str(exc), str(path)))
                continue
            for label, doc in docs:
                try:
                    policies.append(to_policy(admit(doc, label).doc))
                except ValidationFailed as exc:
                    errors.extend(exc.errors)
    if errors:
        raise ValidationFailed(errors)
    return policies


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a map of strings")
    return {str(k): str(v) for k, v in value.items()}


def _workload(raw: Any) -> Workload:
    if not isinstance(raw, dict):
        raise ValueError("workload is required and must be a map")
    kind = raw.get("kind", "container")
    if kind not in ("container", "host"):
        raise ValueError(f"workload.kind must be container or host, got {kind!r}")
    labels = _str_map(raw.get("labels"), "workload.labels")
    if kind == "host":
        labels = {**labels, **_str_map(raw.get("node_labels"), "workload.node_labels")}
    name = str(raw.get("container") or raw.get("name") or ("host" if kind == "host" else "container"))
    namespace = str(raw.get("namespace") or ("" if kind == "host" else "default"))
    return Workload(id="simulated", name=name, namespace=namespace,
                    kind=kind, node="simulate", mntns=0, pidns=0, labels=labels,
                    namespace_annotations=_str_map(raw.get("namespace_annotations"), "workload.namespace_annotations"),
                    annotations=_str_map(raw.get("annotations"), "workload.annotations"))


def _int(line: dict[str, Any], key: str) -> int:
    value = line.get(key, -1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    return value


def _access(line: dict[str, Any]) -> Access:
    op = line.get("operation")
    if op not in OPERATIONS:
        raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}, got {op!r}")
    text = {k: line.get(k) or "" for k in ("resource", "access", "source", "protocol", "capability", "syscall")}
    for key, value in text.items():
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
    needed = {"Process": "resource", "File": "resource", "Network": "protocol", "Capabilities": "capability",
              "Syscall": "syscall"}[op]
    if not text[needed] and not (op in ("Network", "Capabilities") and text["resource"]):
        raise ValueError(f"a {op} access needs {needed!r}")
    if text["access"] not in ("", "exec", "read", "write"):
        raise ValueError(f"access must be exec, read or write, got {text['access']!r}")
    return Access(operation=op, uid=_int(line, "uid"), resource_owner_uid=_int(line, "resource_owner_uid"), **text)


class Simulator:
    """Judges accesses against a fixed set of policies, compiling each distinct workload once."""

    def __init__(self, policies: list[Policy], default_posture: Posture = DEFAULT_POSTURE) -> None:
        self.policies = policies
        self.default_posture = default_posture
        self._compiled: dict[str, WorkloadRules] = {}

    def _rules_for(self, raw: Any) -> WorkloadRules:
        key = json.dumps(raw, sort_keys=True, default=str)
        if key not in self._compiled:
            wl = _workload(raw)
            rs = compile_rules(self.policies, [wl], "simulate", default_posture=self.default_posture)
            self._compiled[key] = rs.workloads[wl.id]
        return self._compiled[key]

    def verdict(self, line: Any) -> dict[str, Any]:
        """The verdict for one decoded input line; ValueError naming what is wrong with it."""
        if not isinstance(line, dict):
            raise ValueError(f"a line must be a JSON object, got {type(line).__name__}")
        rules = self._rules_for(line.get("workload"))
        decision = decide(rules, _access(line))
        if decision is None:
            return dict(_NO_MATCH)
        return {"action": decision.action, "policy": decision.policy, "type": decision.alert_type,
                "severity": str(decision.severity) if decision.severity else "", "message": decision.message,
                "tags": list(decision.tags), "alert": decision.alert}


def simulate_lines(sim: Simulator, lines: Iterable[str]) -> Iterator[str]:
    """One JSON output line per input line, in order; bad (or blank) lines get ``{"error": ...}``."""
    for number, text in enumerate(lines, 1):
        if not text.strip():
            yield json.dumps({"error": f"line {number}: empty line"})
            continue
        try:
            out = sim.verdict(json.loads(text))
        except json.JSONDecodeError as exc:
            out = {"error": f"line {number}: not valid JSON: {exc.msg} at column {exc.colno}"}
        except ValueError as exc:
            out = {"error": f"line {number}: {exc}"}
        yield json.dumps(out)


def add_history_arguments(p: argparse.ArgumentParser) -> None:
    """``--history`` (rehearsal on stored records, :mod:`bulwark.rehearse`) and its options."""
    from bulwark.rehearse import add_history_options

    p.add_argument("--history", action="store_true",
                   help="replay the stored logs and alerts instead of --events; exit 1 if anything would be blocked")
    add_history_options(p)
    p.add_argument("--no-applied", action="store_true", help="with --history: ignore the policies applied now")
    p.add_argument("--json", action="store_true", help="with --history: the report as JSON")
    p.add_argument("--examples", type=int, default=20, help="with --history: groups shown per workload (0: all)")


def run_simulate(args: argparse.Namespace) -> int:
    """The ``bulwark policy simulate`` command: 0 when every line was judged, 1 if some were not,
    2 when the policies or options are invalid (nothing judged). With ``--history``: see
    :func:`bulwark.rehearse.run_rehearse`."""
    history = bool(getattr(args, "history", False))
    if history == bool(args.events):
        print("INVALID options: give either --events FILE or --history", file=sys.stderr)
        return 2
    try:
        posture = parse_posture_spec(args.default_posture or "")
    except ValueError as exc:
        print(f"INVALID --default-posture {exc}", file=sys.stderr)
        return 2
    try:
        policies = load_policies(args.file)
    except ValidationFailed as exc:
        for e in exc.errors:
            print(f"INVALID {e.document}: {e.path or '(document)'}: {e.message}", file=sys.stderr)
        return 2
    if history:
        from bulwark.rehearse import resolve_history_options, run_rehearse

        problem = resolve_history_options(args)
        if problem:
            print(f"INVALID {problem}", file=sys.stderr)
            return 2
        return run_rehearse(args, policies, posture)
    sim = Simulator(policies, posture)
    failed = False
    try:
        source = sys.stdin if args.events == "-" else open(args.events, encoding="utf-8", errors="replace")
    except OSError as exc:
        print(f"INVALID --events {args.events}: {exc.strerror}", file=sys.stderr)
        return 2
    with source:
        try:
            for out in simulate_lines(sim, source):
                failed |= out.startswith('{"error"')
                print(out)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (| head): stop quietly
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the exit flush does not raise again
    return 1 if failed else 0

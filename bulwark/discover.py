"""``bulwark discover``: the least-permissive Allow policy that would have permitted what a workload did.

From the stored logs and alerts of the selected workloads (see :mod:`bulwark.rehearse` for how they
are read), one KubeArmorPolicy per distinct (namespace, labels) is generated with Allow rules:

* process: every program executed (``matchPaths``);
* file: every file touched, ``readOnly`` where it was only read; a directory (``matchDirectories``,
  not recursive) where ``dir_threshold`` files or more of one directory were touched, and always for
  scratch directories (/tmp, /var/tmp, /dev/shm, /run) whose file names change from run to run;
  ``/proc/<pid>/...`` becomes the pattern ``/proc/*/...``;
* network: the protocols of the sockets it created; capabilities: those it used;
* ``fromSource`` (the executables that did it) when at most ``max_sources`` did, which keeps another
  program of the workload from using the same permission.

Logs name paths as the program wrote them (``/bin/sh``) while an enforcer that judges an open file sees
its canonical path (``/usr/bin/dash``): for workloads on the host's filesystem (``bulwark run``, the
host) both are listed, plus the programs and ELF interpreters the kernel opens for each exec
(:func:`add_resolved`). Operations that were refused (an alert with Action Block whose Result is not
Passed) were not done and are left out. Output is deterministic: sorted, with a comment giving each
rule's count.
"""
from __future__ import annotations

import argparse
import os
import posixpath
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from bulwark.rehearse import add_history_options, history_records, record_access, resolve_history_options

__all__ = ["Discovery", "discover", "render_policies", "add_discover_parser", "run_discover"]

SCRATCH_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/")
_PROC_PID = re.compile(r"^/proc/\d+(/|$)")
_NOT_DNS = re.compile(r"[^a-z0-9.-]+")
CONTAINER_NAME_LABEL = "kubearmor.io/container.name"
MAX_RESOURCES = 50_000  # distinct resources kept per workload and operation
HOST_ROOTED = ("", "local")  # images of workloads that see the host's files (`bulwark run` says "local")


@dataclass
class _Use:
    count: int = 0
    writes: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    any_source: bool = False  # opened for an exec by whichever program exec'd it: no fromSource


@dataclass
class _Workload:
    namespace: str
    labels: dict[str, str]
    names: set[str] = field(default_factory=set)
    host: str = ""
    image: str = ""
    records: int = 0
    ops: dict[str, dict[str, _Use]] = field(default_factory=lambda: defaultdict(dict))
    dropped: int = 0


class Discovery:
    """Accumulates what each workload did, record by record (memory: distinct resources, capped)."""

    def __init__(self) -> None:
        self.workloads: dict[tuple[str, str], _Workload] = {}
        self.refused = 0
        self.skipped = 0

    def feed(self, r: dict[str, Any]) -> None:
        """Count one stored record."""
        if str(r.get("Type", "")).startswith("Matched") and r.get("Action") == "Block" and r.get("Result") != "Passed":
            self.refused += 1
            return
        access = record_access(r)
        if access is None or access.operation == "Syscall" or not access.resource:
            self.skipped += 1
            return
        host = not (r.get("ContainerName") or r.get("PodName") or r.get("ContainerID"))
        ns = "" if host else str(r.get("NamespaceName", ""))
        labels_text = str(r.get("Labels", ""))
        key = (f"host:{r.get('HostName', '')}" if host else ns, labels_text or f"name={r.get('ContainerName', '')}")
        wl = self.workloads.get(key)
        if wl is None:
            labels = dict(kv.split("=", 1) for kv in labels_text.split(",") if "=" in kv)
            wl = self.workloads[key] = _Workload(ns, labels, host=str(r.get("HostName", "")) if host else "")
        wl.records += 1
        if r.get("ContainerName"):
            wl.names.add(str(r["ContainerName"]))
        if r.get("ContainerImage"):
            wl.image = str(r["ContainerImage"])
        uses = wl.ops[access.operation]
        use = uses.get(access.resource)
        if use is None:
            if len(uses) >= MAX_RESOURCES:
                wl.dropped += 1
                return
            use = uses[access.resource] = _Use()
        use.count += 1
        use.writes += access.access == "write"
        if access.source:
            use.sources[access.source] += 1


def _sources(use: _Use, max_sources: int) -> list[dict[str, str]]:
    srcs = sorted(use.sources)
    if use.any_source:
        return []
    if not srcs or len(srcs) > max_sources or not all(s.startswith("/") for s in srcs):
        return []
    return [{"path": s} for s in srcs]


def _merge(uses: Iterable[_Use]) -> _Use:
    out = _Use()
    for u in uses:
        out.count += u.count
        out.writes += u.writes
        out.sources.update(u.sources)
        out.any_source |= u.any_source
    return out


def _file_entries(files: dict[str, _Use], dir_threshold: int) -> tuple[list[tuple[str, str, _Use]], int]:
    """(kind, target, use) for files: ``path``, ``dir`` or ``pattern`` entries, sorted."""
    by_dir: dict[str, dict[str, _Use]] = defaultdict(dict)
    patterns: dict[str, list[_Use]] = defaultdict(list)
    for path, use in files.items():
        if not path.startswith("/"):
            continue  # a relative name cannot be matched by a rule
        if _PROC_PID.match(path):
            patterns[_PROC_PID.sub(r"/proc/*\1", path)].append(use)
            continue
        by_dir[posixpath.dirname(path).rstrip("/") + "/"][path] = use
    out: list[tuple[str, str, _Use]] = [("pattern", p, _merge(u)) for p, u in patterns.items()]
    for d, members in by_dir.items():
        scratch = any(d.startswith(s) for s in SCRATCH_DIRS)
        if (scratch or len(members) >= dir_threshold) and d != "/":
            out.append(("dir", d, _merge(members.values())))
        else:
            out += [("path", p, u) for p, u in members.items()]
    out.sort(key=lambda e: (e[1], e[0]))
    return out, len(files)


def _comment(text: str) -> str:
    return f"__comment__ {text}"


def resolve_in(root: str, path: str) -> str | None:
    """``path`` with its symlinks followed inside the filesystem at ``root`` (None when missing or a loop)."""
    parts = [p for p in path.split("/") if p]
    current, hops = "/", 0
    while parts:
        name = parts.pop(0)
        if name in (".", ""):
            continue
        if name == "..":
            current = posixpath.dirname(current)
            continue
        candidate = posixpath.join(current, name)
        full = os.path.join(root, candidate.lstrip("/"))
        if os.path.islink(full):
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(full)
            parts = [p for p in target.split("/") if p] + parts
            current = "/" if target.startswith("/") else current
            continue
        if not os.path.lexists(full):
            return None
        current = candidate
    return current


def add_resolved(wl: _Workload, root: str) -> None:
    """Add the canonical path of every program and file (what an enforcer that judges an open file by
    its own path sees), and, to the file allow-list, the programs themselves and their ELF
    interpreters (the kernel opens both for an exec; no syscall of the workload names them)."""
    from services.enforcer.landlock import elf_interpreter

    for op in ("Process", "File"):
        uses = wl.ops.get(op, {})
        for path, use in list(uses.items()):
            real = resolve_in(root, path) if path.startswith("/") else None
            if real and real != path:
                uses[real] = _merge([uses[real], use]) if real in uses else _merge([use])
    files = wl.ops.get("File")
    if files is None:
        return
    for path in list(wl.ops.get("Process", {})):
        real = resolve_in(root, path) if path.startswith("/") else None
        if not real:
            continue
        try:
            interp = elf_interpreter(os.path.join(root, real.lstrip("/")))
        except (IndexError, ValueError):  # a truncated ELF header: no interpreter to add
            interp = ""
        for needed in filter(None, (real, interp and resolve_in(root, interp))):
            files.setdefault(needed, _Use()).any_source = True


def _policy(wl: _Workload, name: str, dir_threshold: int, max_sources: int) -> dict[str, Any]:
    """The Allow policy of one workload; comments ride along as ``__comment__`` keys, written by render."""
    spec: dict[str, Any] = {}
    procs = wl.ops.get("Process", {})
    if procs:
        spec["process"] = {"matchPaths": [
            {_comment(f"{u.count} exec(s)"): None, "path": p,
             **({"fromSource": s} if (s := _sources(u, max_sources)) else {})}
            for p, u in sorted(procs.items()) if p.startswith("/") and not p.endswith("/")]}
    files = wl.ops.get("File", {})
    if files:
        entries, _ = _file_entries(files, dir_threshold)
        section: dict[str, list[dict[str, Any]]] = {"matchPaths": [], "matchDirectories": [], "matchPatterns": []}
        for kind, target, u in entries:
            opened = ", opened by the kernel for an exec" if u.any_source else ""
            note = {_comment(f"{u.count} access(es), {u.writes} write(s){opened}"): None}
            extra = {**({"readOnly": True} if not u.writes else {}),
                     **({"fromSource": s} if (s := _sources(u, max_sources)) else {})}
            if kind == "path":
                section["matchPaths"].append({**note, "path": target, **extra})
            elif kind == "dir":
                section["matchDirectories"].append({**note, "dir": target, **extra})
            else:  # the CRD has no fromSource for patterns
                ro = {"readOnly": True} if not u.writes else {}
                section["matchPatterns"].append({**note, "pattern": target, **ro})
        spec["file"] = {k: v for k, v in section.items() if v}
    nets = wl.ops.get("Network", {})
    if nets:
        spec["network"] = {"matchProtocols": [
            {_comment(f"{u.count} socket(s)"): None, "protocol": p,
             **({"fromSource": s} if (s := _sources(u, max_sources)) else {})}
            for p, u in sorted(nets.items())]}
    caps = wl.ops.get("Capabilities", {})
    if caps:
        spec["capabilities"] = {"matchCapabilities": [
            {_comment(f"{u.count} use(s)"): None, "capability": _cap(c),
             **({"fromSource": s} if (s := _sources(u, max_sources)) else {})}
            for c, u in sorted(caps.items())]}
    kind = "KubeArmorHostPolicy" if wl.host else "KubeArmorPolicy"
    if wl.host:
        selector_key, selector = "nodeSelector", {"matchLabels": dict(sorted(wl.labels.items()))}
    else:
        labels = dict(sorted(wl.labels.items())) or {CONTAINER_NAME_LABEL: "[" + ",".join(sorted(wl.names)) + "]"}
        selector_key, selector = "selector", {"matchLabels": labels}
    meta = {"name": name, **({"namespace": wl.namespace} if not wl.host else {})}
    return {"apiVersion": "security.kubearmor.com/v1", "kind": kind, "metadata": meta,
            "spec": {"severity": 1, "message": "discovered allow-list", selector_key: selector, **spec,
                     "action": "Allow"}}


def _cap(name: str) -> str:
    name = name.strip().lower()
    return name[4:] if name.startswith("cap_") else name


def discover(records: Iterable[dict[str, Any]], *, name: str = "", dir_threshold: int = 4,
             max_sources: int = 3, resolve_root: str | None = "") -> tuple[list[dict[str, Any]], Discovery]:
    """The Allow policies for ``records`` (with ``__comment__`` keys; see :func:`render_policies`).

    ``resolve_root``: the filesystem the workloads see, to add canonical paths (:func:`add_resolved`);
    ``""`` means ``/`` for workloads without an image of their own (``bulwark run`` workloads, whose image
    is ``local``, and the host); None: never."""
    disc = Discovery()
    for r in records:
        disc.feed(r)
    docs: list[dict[str, Any]] = []
    for _key, wl in sorted(disc.workloads.items()):
        if not any(wl.ops.values()):
            continue
        root = resolve_root if resolve_root else ("/" if resolve_root == "" and wl.image in HOST_ROOTED else None)
        if root:
            add_resolved(wl, root)
        base = name or "discovered-" + ("-".join(v for _k, v in sorted(wl.labels.items())) or "-".join(sorted(wl.names))
                                         or wl.host or "workload")
        slug = _NOT_DNS.sub("-", base.lower()).strip("-.")[:240].strip("-.") or "discovered"
        if name and len(disc.workloads) > 1:
            slug = f"{slug}-{len(docs) + 1}"
        docs.append(_policy(wl, slug, dir_threshold, max_sources))
    return docs, disc


def strip_comments(doc: Any) -> Any:
    """``doc`` without the ``__comment__`` keys (what gets validated and applied)."""
    if isinstance(doc, dict):
        return {k: strip_comments(v) for k, v in doc.items() if not str(k).startswith("__comment__")}
    if isinstance(doc, list):
        return [strip_comments(v) for v in doc]
    return doc


def render_policies(docs: list[dict[str, Any]], header: str = "") -> str:
    """YAML documents with each rule's count as a ``#`` comment on the line before it."""
    parts = []
    for doc in docs:
        text = yaml.safe_dump(doc, sort_keys=False, width=1000)
        lines = []
        for line in text.splitlines():
            stripped = line.lstrip(" -")
            if stripped.startswith("__comment__ "):
                indent = line[: len(line) - len(line.lstrip())]
                dash = "- " if line.lstrip().startswith("- ") else ""
                lines.append(f"{indent}{dash}# {stripped[len('__comment__ '):].rsplit(':', 1)[0]}")
                continue
            lines.append(line)
        parts.append(_fix_dashes(lines))
    head = "".join(f"# {h}\n" for h in header.splitlines() if h)
    return head + "---\n".join(parts)


def _fix_dashes(lines: list[str]) -> str:
    """A comment took the list item's dash: give it to the next line (the item's first key)."""
    out: list[str] = []
    carry = False
    for line in lines:
        if carry:
            indent = len(line) - len(line.lstrip())
            line = line[: max(indent - 2, 0)] + "- " + line.lstrip()
            carry = False
        if line.lstrip().startswith("- # "):
            lead = line[: len(line) - len(line.lstrip())]
            out.append(f"{lead}  {line.lstrip()[2:]}")
            carry = True
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def add_discover_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``discover`` on the CLI's subparsers."""
    p = sub.add_parser("discover", help="the least-permissive Allow policy from what workloads did (stored logs)")
    add_history_options(p)
    p.add_argument("--name", default="", help="policy name (default: discovered-<labels>)")
    p.add_argument("--dir-threshold", type=int, default=4, help="files of one directory that make it a directory rule")
    p.add_argument("--max-sources", type=int, default=3, help="fromSource only when at most this many programs did it")
    p.add_argument("--resolve-root", default="", metavar="DIR",
                   help="add canonical paths as resolved under DIR (default / for workloads without an image)")
    p.add_argument("--no-resolve", action="store_true", help="keep the paths exactly as they were logged")
    p.add_argument("-o", "--output", default="-", help="file to write (default stdout)")
    p.set_defaults(func=run_discover)
    return p


def run_discover(args: argparse.Namespace) -> int:
    """Entry point of ``bulwark discover``: 0 with policies written, 1 when nothing was found, 2 on errors."""
    from services.policy.validate import admit
    from shared.errors import ValidationFailed

    problem = resolve_history_options(args)
    if problem or args.dir_threshold < 2 or args.max_sources < 0:
        print(f"bulwark discover: {problem or '--dir-threshold must be >= 2, --max-sources >= 0'}", file=sys.stderr)
        return 2
    try:
        docs, disc = discover(history_records(args), name=args.name, dir_threshold=args.dir_threshold,
                              max_sources=args.max_sources, resolve_root=None if args.no_resolve else args.resolve_root)
    except Exception as exc:  # the store or the API failed: nothing to say
        print(f"bulwark discover: reading the history failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if not docs:
        print("bulwark discover: no stored record matches the selection", file=sys.stderr)
        return 1
    for doc in docs:
        try:
            admit(strip_comments(doc), doc["metadata"]["name"])
        except ValidationFailed as exc:
            print(f"bulwark discover: generated policy is invalid (a bug): {exc}", file=sys.stderr)
            return 2
    window = f"since {args.since}" if args.since else "all stored history"
    header = (f"bulwark discover: {sum(w.records for w in disc.workloads.values())} records ({window}); "
              f"{disc.refused} refused operations left out")
    text = render_policies(docs, header)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"{len(docs)} policies written to {args.output}", file=sys.stderr)
    return 0

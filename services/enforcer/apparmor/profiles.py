"""AppArmor profile text from a workload's compiled rules, one profile per workload (KubeArmor's way).

Mapping (learned from KubeArmor's AppArmor enforcer, written anew):

- Block: ``audit deny`` rules (``audit`` so that the kernel logs the denial: a plain ``deny`` is
  silent, and the log is where alerts come from). Process -> ``mx`` (``m`` also refuses the
  executable mapping a loader run as a program, ``ld.so PATH``, needs); File -> ``rwkl``;
  readOnly File -> ``w`` (reads stay allowed); ownerOnly -> ``deny other PATH`` (the owner keeps access)
- Audit: ``audit`` allow rules (the access is logged, not refused)
- Allow with the posture ``block`` (allow-lists): the catch-all of that kind is left out, so only the
  allowed entries pass; Process and File lists stay separate (a Process list alone keeps every
  non-exec file access, a File list alone keeps every exec)
- directories: ``DIR/*`` (direct children) or ``DIR/**`` (recursive); patterns are turned back into
  AppArmor globs (the policy compiler made them from globs, ``services.policy.globs``) when they are of
  that form, else left out
- Network: ``deny network <family> <type or protocol>,``; Capabilities: ``deny capability <name>,``
- fromSource would need a child profile per source program: left out. Left-out rules are counted
  (``Profile.skipped``) and named in the header.

Paths come from policies: they are quoted with ``"`` and ``\\`` escaped, AppArmor's glob characters in
exact paths escaped, and a path holding a control character is refused (left out), so a policy can
never add a rule of its own to the profile text.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from shared.schemas.rules import Rule

__all__ = ["PREFIX", "Profile", "profile_name", "workload_of", "generate_profile", "regex_to_glob",
           "NETWORK", "OPERATIONS"]

PREFIX = "bulwark-"
OPERATIONS = frozenset({"Process", "File", "Network", "Capabilities"})
# protocol name (compiled rules, lower case) -> AppArmor network rule specs (domain type/protocol).
# apparmor_parser 3.0 names only tcp/udp/icmp as protocols, and the kernel compares the protocol
# number socket() was given (0 for a default TCP socket), so socket types stand in: TCP is an inet
# stream, UDP an inet dgram, ICMPv6 an inet6 raw socket (ping6's), SCTP a seqpacket one.
NETWORK = {"tcp": ("inet stream", "inet6 stream"), "udp": ("inet dgram", "inet6 dgram"),
           "icmp": ("inet icmp",), "icmpv6": ("inet6 raw",), "raw": ("raw",),
           "sctp": ("inet seqpacket", "inet6 seqpacket"), "stream": ("stream",), "dgram": ("dgram",),
           "rdm": ("rdm",), "seqpacket": ("seqpacket",), "all": ("",)}
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_GLOB_SPECIAL = set('*?[]{},\\"')
_MAX_PATH = 4096
# Rules every workload profile starts with: what an unconfined process may do, minus the denials
# below. Kinds the kernel mediates (signal, ptrace, unix, mount) are allowed wholesale, else a
# confined shell could not even signal its children.
_BASE = ("network,", "capability,", "signal,", "ptrace,", "unix,", "mount,", "umount,", "pivot_root,")
_ALL_FILES = '"/{,**}"'


@dataclass(frozen=True, slots=True)
class Profile:
    """One generated profile: its name, text and how many rules it could not express."""

    name: str
    text: str
    skipped: int


def profile_name(workload_id: str) -> str:
    """``bulwark-<workload id>`` with only characters AppArmor profile names take unquoted."""
    return PREFIX + _SAFE.sub("_", workload_id)[:200]


def workload_of(label: str) -> str:
    """The profile name in an audit record's ``profile=`` (``bulwark-x//null-/bin/sh`` -> ``bulwark-x``)."""
    return label.split("//", 1)[0].strip()


def _escape_literal(text: str) -> str:
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


def _quote(path: str) -> str | None:
    """The path as a quoted AppArmor path (already escaped), or None when it cannot be written safely."""
    if not path.startswith("/") or len(path) > _MAX_PATH or any(ord(c) < 32 or ord(c) == 127 for c in path):
        return None
    return f'"{path}"'


_TOKENS = ((".*", "**"), ("[^/]*", "*"), ("[^/]", "?"), ("(?:", "{"), ("|", ","), (")", "}"))


def regex_to_glob(regex: str) -> str | None:
    """The AppArmor glob a pattern regex was made from (``services.policy.globs``), or None when the
    regex is not of the form that module writes."""
    out: list[str] = []
    i = 0
    while i < len(regex):
        for token, glob in _TOKENS:
            if regex.startswith(token, i):
                out.append(glob)
                i += len(token)
                break
        else:
            c = regex[i]
            if c == "\\" and i + 1 < len(regex):
                out.append(_escape_literal(regex[i + 1]))
                i += 2
            elif c == "[":
                end = regex.find("]", i + 2)
                body = regex[i + 1:end] if end > 0 else ""
                if not body or any(ch in body for ch in '"[{}'):
                    return None
                out.append("[" + body.replace("\\\\", "\\") + "]")
                i = end + 1
            elif c in ".^$+*?{}()|":
                return None
            else:
                out.append(_escape_literal(c))
                i += 1
    glob = "".join(out)
    return glob if glob.startswith("/") else None


def _target(rule: Rule) -> str | None:
    """The quoted AppArmor path the rule names, or None when it cannot be expressed."""
    if rule.path:
        return _quote(_escape_literal(rule.path))
    if rule.dir:
        return _quote(_escape_literal(rule.dir.rstrip("/")) + ("/**" if rule.recursive else "/*"))
    if rule.pattern:
        glob = regex_to_glob(rule.pattern)
        return _quote(glob) if glob else None
    return None


def _file_line(rule: Rule, target: str) -> str:
    process = rule.operation == "Process"
    if rule.action == "Block":
        if not process and rule.read_only:
            return f"audit deny {target} w,"
        if rule.owner_only:
            return f"audit deny other {target} {'mx' if process else 'rw'},"
        return f"audit deny {target} {'mx' if process else 'rwkl'},"
    prefix = "audit " if rule.action == "Audit" else ""
    owner = "owner " if rule.owner_only else ""
    perms = "ix" if process else ("r" if rule.read_only else "rwkl")
    return f"{prefix}{owner}{target} {perms},"


def _verb(action: str) -> str:
    return {"Block": "audit deny ", "Audit": "audit ", "Allow": ""}[action]


_ACTIONS = {"Block": "Block", "Audit": "Audit", "Allow": "Allow", "Audit (Block)": "Audit"}


def _rule_lines(rule: Rule) -> list[str] | None:
    """The profile lines of one rule, or None when AppArmor cannot express it."""
    if rule.from_source or rule.action not in _ACTIONS:
        return None
    if rule.action != _ACTIONS[rule.action]:  # "Audit (Block)": audited workloads are logged, never refused
        rule = dataclasses.replace(rule, action=_ACTIONS[rule.action])
    if rule.operation in ("Process", "File"):
        target = _target(rule)
        return None if target is None else [_file_line(rule, target)]
    if rule.operation == "Network" and rule.protocol.lower() in NETWORK:
        return [f"{_verb(rule.action)}network {spec}".rstrip() + "," for spec in NETWORK[rule.protocol.lower()]]
    if rule.operation == "Capabilities" and re.fullmatch(r"[a-z_]+", rule.capability.lower().removeprefix("cap_")):
        return [f"{_verb(rule.action)}capability {rule.capability.lower().removeprefix('cap_')},"]
    return None


def _base(rules: list[Rule], file_posture: str, network_posture: str, capabilities_posture: str) -> list[str]:
    """The catch-alls: left out where an allow-list with the posture ``block`` must refuse the rest."""
    def listed(op: str, posture: str) -> bool:
        return posture == "block" and any(r.operation == op and r.action == "Allow" for r in rules)

    proc, files = listed("Process", file_posture), listed("File", file_posture)
    base = [line for line in _BASE
            if not (line == "network," and listed("Network", network_posture))
            and not (line == "capability," and listed("Capabilities", capabilities_posture))]
    if not proc and not files:
        base.insert(0, "file,")
    elif proc and not files:
        base.insert(0, f"{_ALL_FILES} rwlkm,")  # every file access but exec
    elif files and not proc:
        base.insert(0, f"{_ALL_FILES} ix,")  # every exec, no other file access
    return base


def generate_profile(workload_id: str, rules: list[Rule], file_posture: str = "audit",
                     network_posture: str = "audit", capabilities_posture: str = "audit") -> Profile:
    """The AppArmor profile for one workload's compiled rules."""
    lines: list[str] = []
    skipped = 0
    for rule in rules:
        got = _rule_lines(rule)
        if got is None:
            skipped += 1
        else:
            lines.extend(got)
    name = profile_name(workload_id)
    body = [*_base(rules, file_posture, network_posture, capabilities_posture), *sorted(set(lines))]
    text = (f"## generated by Bulwark for workload {_SAFE.sub('_', workload_id)[:200]}; "
            f"rules not expressible: {skipped}\n"
            "abi <abi/3.0>,\n"
            "#include <tunables/global>\n\n"
            f"profile {name} flags=(attach_disconnected,mediate_deleted) {{\n"
            "  #include <abstractions/base>\n"
            + "".join(f"  {line}\n" for line in body)
            + "}\n")
    return Profile(name, text, skipped)

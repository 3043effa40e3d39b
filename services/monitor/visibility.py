"""What the kernel may filter: per mount namespace, the kinds of events it emits; and which syscall
numbers the generic raw_syscalls programs report. Pure functions of the node's RuleSet, the known
workloads (for their ``kubearmor-visibility`` annotations) and the global defaults.

Alerts must never be filtered: every kind a workload's rules name is OR-ed into its mask, and the
default entry (0: any mount namespace not listed, e.g. a workload identity has not reported yet)
holds the container default plus every kind any rule on the node names. Before the first RuleSet
everything is emitted.
"""
from __future__ import annotations

from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, RuleSet
from shared.visibility import VISIBILITY_ANNOTATION, parse_visibility
from services.monitor.syscall_table import SYSCALL_NUMBERS

__all__ = ["KIND_BITS", "OPERATION_BITS", "ALL", "bits_of", "visibility_masks", "wanted_syscalls",
           "DEDICATED_SYSCALLS", "PATH_ARG", "needs_owner"]

KIND_BITS = {"process": 1, "file": 2, "network": 4, "capabilities": 8}
OPERATION_BITS = {"Process": 1, "File": 2, "Network": 4, "Capabilities": 8, "Syscall": 16}
ALL = 31
# syscalls with their own programs whose records are already of kind "syscall"
DEDICATED_SYSCALLS = frozenset({"setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
                                "ptrace", "mount", "umount2"})
# syscall -> (index of its path argument, whether argument 0 is the dirfd it is relative to)
PATH_ARG: dict[str, tuple[int, bool]] = {
    **{name: (0, False) for name in (
        "open", "creat", "unlink", "rmdir", "mkdir", "chmod", "chown", "lchown", "truncate", "rename",
        "link", "chdir", "chroot", "execve", "mknod", "readlink", "stat", "lstat", "access", "acct",
        "swapon", "swapoff", "pivot_root", "setxattr", "lsetxattr", "getxattr", "removexattr")},
    "symlink": (1, False),
    **{name: (1, True) for name in (
        "openat", "openat2", "unlinkat", "mkdirat", "fchmodat", "fchmodat2", "fchownat", "renameat",
        "renameat2", "linkat", "mknodat", "faccessat", "faccessat2", "newfstatat", "execveat",
        "utimensat", "readlinkat", "statx")},
}


def bits_of(words: frozenset[str]) -> int:
    """{"process", "file"} -> 3."""
    out = 0
    for word in words:
        out |= KIND_BITS.get(word, 0)
    return out


def _rule_bits(rules: list[Rule], host: bool = False) -> int:
    """The kinds ``rules`` judge. A Process Block also needs file opens in a workload: the loader run as
    a program (``ld.so PROGRAM``) opens PROGRAM instead of exec'ing it (shared.loaders). Not on the host,
    where that would emit every open of the node; there such a refusal has no alert unless file events
    are visible."""
    out = 0
    for rule in rules:
        out |= OPERATION_BITS.get(rule.operation, 0)
        if rule.operation == "Process" and rule.action == "Block" and not host:
            out |= OPERATION_BITS["File"]
    return out


def _workload_bits(workload: Workload | None, host: bool, containers: str, hosts: str) -> int:
    if workload is not None:
        host = workload.kind == "host"
        annotations = workload.annotations if host else workload.namespace_annotations
        annotated = annotations.get(VISIBILITY_ANNOTATION)
        if annotated is not None:
            return bits_of(parse_visibility(annotated))
    return bits_of(parse_visibility(hosts if host else containers))


def visibility_masks(ruleset: RuleSet | None, workloads: dict[str, Workload], host_mntns: int, *,
                     containers: str = "process,file,network,capabilities",
                     hosts: str = "none") -> dict[int, int]:
    """mntns -> bits to emit; key 0 is the default for every mount namespace not listed."""
    if ruleset is None:
        return {0: ALL}
    running = ruleset.running()
    union = 0
    for wr in running:
        union |= _rule_bits(wr.rules, wr.mntns == host_mntns)
    out = {0: bits_of(parse_visibility(containers)) | union}
    host_listed = False
    for wr in running:
        if not wr.mntns:
            continue
        host = wr.mntns == host_mntns
        host_listed |= host
        mask = _workload_bits(workloads.get(wr.workload_id), host, containers, hosts)
        out[wr.mntns] = out.get(wr.mntns, 0) | mask | _rule_bits(wr.rules, host)
    if not host_listed and host_mntns:
        out[host_mntns] = bits_of(parse_visibility(hosts))
    return out


def needs_owner(ruleset: RuleSet | None) -> bool:
    """Whether any running workload has an ownerOnly rule (then opens carry the file's owner).
    Before the first rule set: yes (nothing may be missing for a policy)."""
    if ruleset is None:
        return True
    return any(rule.owner_only for wr in ruleset.running() for rule in wr.rules)


def wanted_syscalls(ruleset: RuleSet | None) -> dict[int, int]:
    """Syscall nr -> bw_sys_wanted value for every syscall a running workload's Syscall rule names."""
    out: dict[int, int] = {}
    if ruleset is None:
        return out
    for wr in ruleset.running():
        for rule in wr.rules:
            name = rule.syscall.lower().removeprefix("sys_")
            if rule.operation != "Syscall" or not name or name in DEDICATED_SYSCALLS:
                continue
            nr = SYSCALL_NUMBERS.get(name)
            if nr is None or nr >= 512:
                continue
            value = 1
            if name in PATH_ARG:
                index, dirfd = PATH_ARG[name]
                value |= (index + 1) << 1 | (16 if dirfd else 0)
            out[nr] = value
    return out

"""What the kernel may filter: per mount namespace, the kinds of events it emits; and which syscall
numbers the generic raw_syscalls programs report. Pure functions of the node's RuleSet, the known
workloads (for their ``kubearmor-visibility`` annotations) and the global defaults.

Alerts must never be filtered: every kind a workload's rules name is OR-ed into its mask, and the
default entry (0: any mount namespace not listed, e.g. a workload identity has not reported yet)
holds the container default plus every kind any rule on the node names. Before the first RuleSet
everything is emitted.

File events can be narrowed further, by path: when a workload's own visibility leaves files out and
every rule that judges its file events names exact paths or directories, its mask gets FILE_PATHS
instead of the file bit, and :func:`path_entries` lists the (mntns, prefix) entries of the kernel's
path trie: only file events whose absolute path starts with one of them are emitted (relative and
unreadable names always are). A rule the trie cannot express (a pattern, an exec name, an
allow-list, whose posture judges every other path) keeps the whole file bit for the namespace.

A preset rule (shared.presets) adds its preset's bit: that namespace emits the preset's records (a
fileless exec, an environ read...), which are rare and nowhere else wanted. Before the first RuleSet
no preset bit is set: a preset's records need a rule that asks for them.
"""
from __future__ import annotations

from collections.abc import Iterable

from services.monitor.decode.syscall_table import SYSCALL_NUMBERS
from shared.bpf.abi import BW_VIS_CAPABILITIES, BW_VIS_FILE, BW_VIS_NETWORK, BW_VIS_PROCESS, BW_VIS_SYSCALL
from shared.bpf.names import CAPABILITIES
from shared.matcher import ALLOWING, BLOCKING
from shared.presets import PRESET_OPERATION, PRESETS
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, RuleSet
from shared.visibility import VISIBILITY_ANNOTATION, parse_visibility

__all__ = ["KIND_BITS", "OPERATION_BITS", "PRESET_BITS", "ALL", "FILE_PATHS", "CAPS_NAMED", "PATH_KEY_LEN",
           "Visibility", "bits_of", "named_capabilities",
           "visibility_masks", "file_prefixes", "path_entries", "wanted_syscalls", "DEDICATED_SYSCALLS",
           "PATH_ARG", "needs_owner"]

KIND_BITS = {"process": BW_VIS_PROCESS, "file": BW_VIS_FILE, "network": BW_VIS_NETWORK,
             "capabilities": BW_VIS_CAPABILITIES}
OPERATION_BITS = {"Process": BW_VIS_PROCESS, "File": BW_VIS_FILE, "Network": BW_VIS_NETWORK,
                  "Capabilities": BW_VIS_CAPABILITIES, "Syscall": BW_VIS_SYSCALL}
ALL = BW_VIS_PROCESS | BW_VIS_FILE | BW_VIS_NETWORK | BW_VIS_CAPABILITIES | BW_VIS_SYSCALL
FILE_PATHS = 32      # BW_VIS_FILE_PATHS: file events only for paths in the trie (bpf/include/bw_maps.h)
CAPS_NAMED = 64      # BW_VIS_CAPS_NAMED: capability events only for the capabilities in bw_caps_named
PATH_KEY_LEN = 252   # BW_PATH_KEY_LEN: bytes of path in a trie key
PRESET_BITS = {name: info.vis_bit for name, info in PRESETS.items()}
_FILE = OPERATION_BITS["File"]
_CAPS = OPERATION_BITS["Capabilities"]
CAPABILITY_NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}
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
    """The kinds ``rules`` judge, as the default entry (any unlisted mntns) must emit them. A Process
    Block also needs file opens in a workload: the loader run as a program (``ld.so PROGRAM``) opens
    PROGRAM instead of exec'ing it (shared.loaders). Not on the host, where that would emit every open
    of the node."""
    out = 0
    for rule in rules:
        out |= OPERATION_BITS.get(rule.operation, 0) | _preset_bit(rule)
        if rule.operation == "Process" and rule.action in BLOCKING and not host:
            out |= _FILE
    return out


def _preset_bit(rule: Rule) -> int:
    """The visibility bit of a preset rule's records (0 for any other rule)."""
    return PRESET_BITS.get(rule.preset, 0) if rule.operation == PRESET_OPERATION else 0


def _resource_prefixes(rule: Rule) -> list[bytes] | None:
    """Trie entries covering every path ``rule`` names, or None when it names paths no prefix can
    express (a pattern, an exec name, a relative or too long path). A directory covers itself too."""
    if rule.path:
        entries = [rule.path.encode() + b"\0"]
    elif rule.dir and not rule.exec_name and not rule.pattern:
        entries = [rule.dir.encode()]           # recursive or not: the kernel over-emits, never under
        if rule.dir.endswith("/") and len(rule.dir) > 1:
            entries.append(rule.dir[:-1].encode() + b"\0")
    else:
        return None
    if any(not e.startswith(b"/") or len(e) > PATH_KEY_LEN for e in entries):
        return None
    return entries


def file_prefixes(rules: list[Rule], host: bool = False) -> frozenset[bytes] | None:
    """The path prefixes whose file events ``rules`` may judge, or None when they need every file
    event. File rules judge their resources; an allow-list (a File Allow rule) judges every other
    path too. Process rules judge the opens of their programs by a loader (shared.loaders), so their
    paths are listed; a Process Block whose programs no prefix expresses needs every open in a
    workload (not on the host, where that would emit every open of the node)."""
    out: set[bytes] = set()
    for rule in rules:
        if rule.operation not in ("File", "Process"):
            continue
        if rule.operation == "File" and rule.action in ALLOWING:
            return None
        if rule.operation == "Process" and rule.action in ALLOWING:
            continue                            # an allowed program's loader open raises nothing
        entries = _resource_prefixes(rule)
        if entries is not None:
            out.update(entries)
        elif rule.operation == "File" or (rule.action in BLOCKING and not host):
            return None
    return frozenset(out)


def named_capabilities(rules: list[Rule]) -> frozenset[int] | None:
    """The capability numbers ``rules`` judge, or None when they need every capability event (an
    allow-list, whose posture judges every other capability, or a name this table lacks)."""
    out: set[int] = set()
    for rule in rules:
        if rule.operation != "Capabilities":
            continue
        name = rule.capability.lower().removeprefix("cap_")
        if rule.action in ALLOWING or name not in CAPABILITY_NUMBERS:
            return None
        out.add(CAPABILITY_NUMBERS[name])
    return frozenset(out)


def _own_rule_bits(rules: list[Rule], host: bool) -> int:
    """A listed mntns's bits for its rules: as _rule_bits, with FILE_PATHS instead of the file bit
    when the trie can hold every path they judge, and CAPS_NAMED instead of the capabilities bit
    when they name their capabilities."""
    out = 0
    for rule in rules:
        out |= OPERATION_BITS.get(rule.operation, 0) | _preset_bit(rule)
    out &= ~(_FILE | _CAPS)
    prefixes = file_prefixes(rules, host)
    if prefixes is None:
        out |= _FILE
    elif prefixes:
        out |= FILE_PATHS
    caps = named_capabilities(rules)
    if caps is None:
        out |= _CAPS
    elif caps:
        out |= CAPS_NAMED
    return out


def _workload_bits(workload: Workload | None, host: bool, containers: str, hosts: str) -> int:
    if workload is not None:
        host = workload.kind == "host"
        annotations = workload.annotations if host else workload.namespace_annotations
        annotated = annotations.get(VISIBILITY_ANNOTATION)
        if annotated is not None:
            return bits_of(parse_visibility(annotated))
    return bits_of(parse_visibility(hosts if host else containers))


def path_entries(ruleset: RuleSet | None, host_mntns: int) -> frozenset[tuple[int, bytes]]:
    """(mntns, prefix) entries of the kernel's path trie: every listed workload's file_prefixes.
    Entries of a namespace that emits every file event anyway are harmless (never looked up)."""
    out: set[tuple[int, bytes]] = set()
    if ruleset is None:
        return frozenset()
    for wr in ruleset.running():
        if not wr.mntns:
            continue
        prefixes = file_prefixes(wr.rules, wr.mntns == host_mntns)
        out.update((wr.mntns, prefix) for prefix in prefixes or ())
    return frozenset(out)


class Visibility(dict[int, int]):
    """mntns -> bits to emit (key 0: every mount namespace not listed), with ``paths``: the
    (mntns, prefix) trie entries the FILE_PATHS bits rely on, ``names``: the names the open
    prefilter treats as listed (None: the entries' own last names, services.monitor.namesigs), and
    ``caps``: the bitmask of capability numbers the CAPS_NAMED bits rely on (all namespaces').
    Equal only with the same paths, names and caps."""

    def __init__(self, masks: dict[int, int] | Iterable[tuple[int, int]] = (),
                 paths: Iterable[tuple[int, bytes]] = (), names: Iterable[bytes] | None = None,
                 caps: int = 0) -> None:
        super().__init__(masks)
        self.paths = frozenset(paths)
        self.names = None if names is None else frozenset(names)
        self.caps = caps

    def __eq__(self, other: object) -> bool:
        return (dict.__eq__(self, other) is True and self.paths == getattr(other, "paths", frozenset())
                and self.names == getattr(other, "names", None) and self.caps == getattr(other, "caps", 0))

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None


def visibility_masks(ruleset: RuleSet | None, workloads: dict[str, Workload], host_mntns: int, *,
                     containers: str = "process,file,network,capabilities",
                     hosts: str = "none") -> Visibility:
    """mntns -> bits to emit; key 0 is the default for every mount namespace not listed. The
    default keeps the whole kinds (an unlisted namespace has no trie entries)."""
    if ruleset is None:
        return Visibility({0: ALL})
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
        out[wr.mntns] = out.get(wr.mntns, 0) | mask | _own_rule_bits(wr.rules, host)
    if not host_listed and host_mntns:
        out[host_mntns] = bits_of(parse_visibility(hosts))
    for mntns, mask in out.items():
        if mask & _FILE:
            mask &= ~FILE_PATHS                 # every file event already
        if mask & _CAPS:
            mask &= ~CAPS_NAMED                 # every capability event already
        out[mntns] = mask
    caps = 0
    for wr in running:
        if wr.mntns and out.get(wr.mntns, 0) & CAPS_NAMED:
            for number in named_capabilities(wr.rules) or ():
                caps |= 1 << number
    return Visibility(out, path_entries(ruleset, host_mntns), caps=caps)


def needs_owner(ruleset: RuleSet | None) -> bool:
    """Whether any running workload has an ownerOnly rule (then opens carry the file's owner).
    Before the first rule set: yes (nothing may be missing for a policy)."""
    if ruleset is None:
        return True
    return any(rule.owner_only for wr in ruleset.running() for rule in wr.rules)


def needs_real_paths(ruleset: RuleSet | None) -> bool:
    """Whether any running workload has a Process rule naming a path (then exec'd paths' symlinks are
    resolved: the kernel's enforcers judge the file a symlink leads to). Before the first rule set: yes."""
    if ruleset is None:
        return True
    return any(rule.operation == "Process" and (rule.path or rule.dir or rule.pattern)
               for wr in ruleset.running() for rule in wr.rules)


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

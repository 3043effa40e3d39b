"""The names the kernel's open prefilter looks for (bpf/include/bw_names.h): the last name of every
path-trie entry and, when the entry is a symlink in its namespace, of the symlink's target (the
kernel sees the dentries the open reached, not the path as written). Kept as a bitset of name
signatures for all namespaces together."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from shared.procroot import open_in_root, pids_by_mntns

__all__ = ["SIG_BITS", "SIG_BYTES", "name_signature", "entry_name", "entry_names", "signature_bits"]

log = logging.getLogger("bulwark.monitor.namesigs")

SIG_BITS = 16                      # BW_SIG_BITS in bpf/include/bw_maps.h
SIG_BYTES = 1 << (SIG_BITS - 3)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def name_signature(name: bytes) -> int:
    """The bit of ``name`` (one path component), as bw_name_sig computes it from the dentry."""
    first8 = int.from_bytes(name[:8].ljust(8, b"\0"), "little")
    return (((first8 ^ len(name)) * _GOLDEN) & _MASK64) >> (64 - SIG_BITS)


def entry_name(prefix: bytes) -> bytes:
    """The last name of a trie entry: an exact path ends with NUL, a directory with '/'."""
    path = prefix.rstrip(b"\0").rstrip(b"/")
    return path.rsplit(b"/", 1)[-1] if path else b"/"


def _target_name(path: bytes, pid: int | None) -> bytes | None:
    """The last name of what ``path`` resolves to in ``pid``'s root, or None when it does not exist."""
    try:
        fd = open_in_root(os.fsdecode(path.rstrip(b"\0").rstrip(b"/") or b"/"), pid)
    except OSError:
        return None
    try:
        target = os.readlink(f"/proc/self/fd/{fd}").encode()
    except OSError:
        return None
    finally:
        os.close(fd)
    return entry_name(target.removesuffix(b" (deleted)"))


def entry_names(paths: Iterable[tuple[int, bytes]], resolve: bool = True) -> frozenset[bytes]:
    """Every name the prefilter must treat as listed for the (mntns, prefix) trie entries. With
    ``resolve``, each entry is also opened in its namespace (one of its processes' root) and the
    name of a symlink's target is added; a namespace without a process has no opens to filter."""
    entries = list(paths)
    names = {entry_name(prefix) for _mntns, prefix in entries}
    if not resolve or not entries:
        return frozenset(names)
    pids = pids_by_mntns({mntns for mntns, _prefix in entries})
    for mntns, prefix in entries:
        pid = pids.get(mntns)
        if pid is None:
            continue
        target = _target_name(prefix, pid)
        if target is not None:
            names.add(target)
    return frozenset(names)


def signature_bits(names: Iterable[bytes]) -> bytes:
    """The bw_name_sigs bitset of ``names``."""
    bits = bytearray(SIG_BYTES)
    for name in names:
        sig = name_signature(name)
        bits[sig >> 3] |= 1 << (sig & 7)
    return bytes(bits)

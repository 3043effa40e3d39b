"""Writing LsmTables into the BPF-LSM programs' maps, in an order that never opens a gap.

Namespaces that lose every rule leave ``bw_enf_ns`` first; then every new or changed path entry,
socket class and verdict is written; then the namespaces' flags; only then is what no rule needs any
more deleted. Class ids are stable (``rules.Classes``), so a rule change overwrites verdicts in place.
"""
from __future__ import annotations

import ctypes as ct
from collections.abc import Callable
from typing import Any

from services.enforcer.bpflsm.rules import SLOTS, LsmTables

__all__ = ["write_tables", "clear_tables"]

_PREFIX_HEAD_BITS = 64  # mntns + kind, before the path


def _put(table: Any, wanted: dict[Any, Any], make_key: Callable[[Any, Any], Any],
         make_val: Callable[[Any, Any], Any]) -> set[bytes]:
    """Add/update every wanted entry; the raw keys written."""
    keep: set[bytes] = set()
    for key, val in wanted.items():
        k = make_key(table.Key(), key)
        table[k] = make_val(table.Leaf(), val)
        keep.add(bytes(k))
    return keep


def _prune(table: Any, keep: set[bytes]) -> None:
    """Delete every entry whose raw key is not in ``keep``."""
    for k in list(table.keys()):
        if bytes(k) not in keep:
            try:
                del table[k]
            except KeyError:
                pass


def _path_key(k: Any, key: tuple[int, int, bytes]) -> Any:
    mntns, kind, raw = key
    k.prefixlen = _PREFIX_HEAD_BITS + 8 * len(raw)
    k.mntns, k.kind = mntns, kind
    ct.memmove(ct.addressof(k) + type(k).path.offset, raw, len(raw))
    return k


def _path_val(leaf: Any, val: tuple[int, int, int]) -> Any:
    leaf.cls, leaf.len, leaf.dir = val
    return leaf


def _net_key(k: Any, key: tuple[int, int, int, int]) -> Any:
    k.mntns, k.family, k.type, k.protocol = key
    return k


def _u32(leaf: Any, val: int) -> Any:
    leaf.value = val
    return leaf


def _verdict_key(k: Any, key: tuple[int, int, int, int]) -> Any:
    k.mntns, k.kind, k.res, k.src = key
    return k


def _preset_key(k: Any, key: tuple[int, int]) -> Any:
    k.mntns, k.preset = key
    return k


def _block(leaf: Any, rule_id: int) -> Any:
    leaf.rule_id, leaf.action = rule_id, 1
    return leaf


def _verdict_val(leaf: Any, val: tuple[tuple[int, ...], tuple[int, ...]]) -> Any:
    rule_ids, actions = val
    for i in range(SLOTS):
        leaf.rule_id[i], leaf.action[i] = rule_ids[i], actions[i]
    return leaf


def write_tables(bpf: Any, tables: LsmTables) -> None:
    """Make the kernel maps hold exactly ``tables``."""
    ns_map = bpf[b"bw_enf_ns"]
    for k in list(ns_map.keys()):
        if k.value not in tables.namespaces:
            del ns_map[k]
    keep_paths = _put(bpf[b"bw_lsm_paths"], tables.paths, _path_key, _path_val)
    keep_net = _put(bpf[b"bw_lsm_net"], tables.net, _net_key, _u32)
    keep_verdicts = _put(bpf[b"bw_lsm_verdicts"], tables.verdicts, _verdict_key, _verdict_val)
    keep_presets = _put(bpf[b"bw_enf_preset"], tables.presets, _preset_key, _block)
    for ns, flags in tables.namespaces.items():
        ns_map[ct.c_uint32(ns)] = ct.c_uint32(flags)
    _prune(bpf[b"bw_enf_preset"], keep_presets)
    _prune(bpf[b"bw_lsm_verdicts"], keep_verdicts)
    _prune(bpf[b"bw_lsm_net"], keep_net)
    _prune(bpf[b"bw_lsm_paths"], keep_paths)


def clear_tables(bpf: Any) -> None:
    """Forget every namespace first, then every entry."""
    write_tables(bpf, LsmTables())

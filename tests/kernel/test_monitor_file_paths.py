"""The in-kernel path filter on the real kernel: a workload whose file visibility is off but whose
rules name paths emits the file events of those paths (opens blocked by the fanotify enforcer too,
files in a ruled directory, unlinks, relative names of ruled files), and nothing else; a rule change
moves it. Successful opens are first judged by the names of the file's dentries (bw_names.h): a
ruled path that is a symlink, long names, other mounts and descriptors past 64 must still reach the
trie. The masks and entries come from visibility_masks, the names from entry_names, as the monitor
service computes them."""
from __future__ import annotations

import errno
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.enforcer.fanotify.enforcer import FanotifyEnforcer
from services.monitor.decode.records import SYS_HEAD
from services.monitor.kernel_filters import FILE_PATHS, Visibility, visibility_masks
from services.monitor.loader import Probes
from services.monitor.namesigs import entry_names
from shared.bpf.abi import BW_OP_FILE, BwSysEvent, offset
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule
from tests.kernel.nsutil import NsShell, file_rule, ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]

OP_FILE = BW_OP_FILE
NR_FCHOWN = 93  # x86_64
_MNTNS, _RET = 10, 15  # indexes of bw_task_info.mntns and the record's ret in SYS_HEAD's fields
DENIED = "Operation not permitted"
_NAME = offset(BwSysEvent, "name")


@pytest.fixture
def tree() -> Iterator[Path]:
    """A world-readable private tree: secret, other, dir/sub/deep, dir/gone."""
    root = Path(tempfile.mkdtemp(prefix="bw-mon-paths-"))
    try:
        root.chmod(0o755)
        (root / "dir/sub").mkdir(parents=True)
        for rel in ("secret", "other", "dir/sub/deep", "dir/gone", "gone2"):
            (root / rel).write_text("data\n")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _rule(action: str = "Block", **kw: object) -> Rule:
    return file_rule(action, policy="paths", **kw)


def _quiet(shell: NsShell) -> Workload:
    return Workload(id="w", name="w", namespace="default", kind="container", node="n", mntns=shell.mntns,
                    pidns=0, namespace_annotations={"kubearmor-visibility": "none"})


def _masks(rs: object, workloads: dict[str, Workload], **kw: str) -> Visibility:
    """visibility_masks with the names resolved in the namespaces, as the monitor's follower does."""
    masks = visibility_masks(rs, workloads, host_mntns=1, **kw)  # type: ignore[arg-type]
    masks.names = entry_names(masks.paths)
    return masks


def _file_events(probes: Probes, records: list[bytes]) -> dict[bytes, list[tuple[int, int]]]:
    """Drained file records: name -> [(mntns, ret)]."""
    probes.drain()
    out: dict[bytes, list[tuple[int, int]]] = {}
    for rec in records:
        head = SYS_HEAD.unpack_from(rec)
        if head[0] != OP_FILE:
            continue
        name = rec[_NAME:_NAME + head[-2]].rstrip(b"\0")
        out.setdefault(name, []).append((head[_MNTNS], head[_RET]))
    records.clear()
    return out


def _names_prefilter(mon: Probes) -> bool:
    """Whether the programs were built with the name prefilter (kernels with dentry.d_shortname): only
    then do the names keep unruled opens, relative names and fchowns in the kernel."""
    return "-DBW_NAMES_PREFILTER=1" in mon.cflags


def test_only_ruled_paths_are_emitted(probes: tuple[Probes, list[bytes]], tree: Path) -> None:
    mon, records = probes
    secret, other = tree / "secret", tree / "other"
    a, b = NsShell(), NsShell()
    enforcer = FanotifyEnforcer()
    try:
        rules = [_rule(path=str(secret)), _rule("Audit", dir=f"{tree / 'dir'}/", recursive=True)]
        rs = ruleset(1, w=(a.mntns, rules))
        masks = _masks(rs, {"w": _quiet(a)}, containers="none")
        assert masks[a.mntns] == FILE_PATHS and b.mntns not in masks
        enforcer.apply(rs)
        mon.set_visibility(masks)
        _file_events(mon, records)
        filtered = mon.kernel_stats()["filtered_kernel"]

        rc, out = a.run(f"cat {secret}")                       # blocked by the enforcer: still emitted
        assert rc != 0 and DENIED in out
        assert a.run(f"cat {other} {tree}/dir/sub/deep >/dev/null")[0] == 0
        assert a.run(f"cat {tree}/secretx {tree}/dir2 2>/dev/null; true")[0] == 0   # near misses, absent
        assert a.run(f"cd {tree}/dir && cat sub/deep >/dev/null")[0] == 0       # relative, ruled: emitted
        assert a.run(f"cd {tree} && cat other >/dev/null")[0] == 0              # relative, not ruled
        assert a.run(f"rm {tree}/dir/gone {tree}/gone2")[0] == 0                # unlinks, by path too
        assert b.run(f"cat {other} >/dev/null")[0] == 0          # not listed: the default keeps files
        seen = _file_events(mon, records)
        assert seen[str(secret).encode()] == [(a.mntns, -1)]                    # -EPERM
        assert [m for m, ret in seen[f"{tree}/dir/sub/deep".encode()] if ret >= 0] == [a.mntns]
        assert seen[f"{tree}/dir/gone".encode()] == [(a.mntns, 0)]
        assert [m for m, ret in seen[b"sub/deep"] if ret >= 0] == [a.mntns]
        if _names_prefilter(mon):   # kernels without it emit more (never less): the trie alone decides
            assert b"other" not in seen                                         # decided by its names
        assert [m for m, _ in seen[str(other).encode()]] == [b.mntns]          # a's open stayed in the kernel
        for absent in (f"{tree}/secretx", f"{tree}/dir2", f"{tree}/gone2"):
            assert absent.encode() not in seen
        assert not [n for n, ev in seen.items() if n.startswith(b"/usr/lib") and any(m == a.mntns for m, _ in ev)]
        assert mon.kernel_stats()["filtered_kernel"] > filtered
        if _names_prefilter(mon):
            assert mon.kernel_stats()["filtered_kernel_names"] > 0

        # the rule moves from secret to other: so does the filter
        rs = ruleset(2, w=(a.mntns, [_rule(path=str(other))]))
        mon.set_visibility(_masks(rs, {"w": _quiet(a)}, containers="none"))
        assert a.run(f"cat {other} >/dev/null; cat {tree}/dir/sub/deep >/dev/null")[0] == 0
        seen = _file_events(mon, records)
        assert [m for m, _ in seen[str(other).encode()]] == [a.mntns]
        assert f"{tree}/dir/sub/deep".encode() not in seen
        assert len(list(mon._bpf[b"bw_file_paths"].keys())) == 1   # the old entries are gone

        # files visible again for the workload: every open, the trie no longer consulted
        mon.set_visibility(_masks(rs, {}))
        assert a.run(f"cat {tree}/dir/sub/deep >/dev/null")[0] == 0
        assert [m for m, _ in _file_events(mon, records)[f"{tree}/dir/sub/deep".encode()]] == [a.mntns]
    finally:
        enforcer.close()
        a.close()
        b.close()


def test_the_name_prefilter_never_hides_a_ruled_file(probes: tuple[Probes, list[bytes]], tree: Path) -> None:
    """Successful opens the dentry names cannot decide go to the trie, and the names of symlink
    targets come from the namespace: every ruled open below is emitted, the unruled ones are not."""
    mon, records = probes
    long_dir = "d" * 45
    (tree / "real").mkdir()
    (tree / "real/conf").write_text("c\n")
    (tree / "target.txt").write_text("t\n")
    (tree / "link.txt").symlink_to(tree / "target.txt")         # a ruled path that is a symlink
    (tree / "linkdir").symlink_to(tree / "real")                # a ruled directory that is a symlink
    (tree / long_dir).mkdir()
    (tree / long_dir / "f").write_text("l\n")
    (tree / "mnt").mkdir()
    (tree / "ruled/sub").mkdir(parents=True)
    a = NsShell()
    try:
        assert a.run(f"mount -t tmpfs bw-test {tree}/mnt && echo m > {tree}/mnt/inner && echo p > {tree}/mnt/plain"
                     f" && mount -t tmpfs bw-test {tree}/ruled/sub"
                     f" && echo x > {tree}/ruled/sub/x && echo y > {tree}/ruled/sub/y"
                     f" && echo q > {tree}/mnt/plain2")[0] == 0
        rules = [_rule("Audit", path=str(tree / "link.txt")), _rule("Audit", dir=f"{tree / 'linkdir'}/"),
                 _rule("Audit", dir=f"{tree / long_dir}/"), _rule("Audit", path=f"{tree}/mnt/inner"),
                 _rule("Audit", path=str(tree / "secret")), _rule("Audit", dir=f"{tree}/ruled/", recursive=True)]
        masks = _masks(ruleset(1, w=(a.mntns, rules)), {"w": _quiet(a)}, containers="none")
        assert {b"target.txt", b"real"} <= masks.names
        mon.set_visibility(masks)
        _file_events(mon, records)
        opens = [f"{tree}/link.txt", f"{tree}/linkdir/conf", f"{tree}/{long_dir}/f", f"{tree}/mnt/inner"]
        assert a.run("cat " + " ".join(opens) + " >/dev/null")[0] == 0
        # relative names on other mounts: the walk crosses to the mount point and finds the ruled
        # directory above it, or nothing (then the open stays in the kernel without the trie)
        assert a.run(f"cd {tree}/ruled/sub && cat x >/dev/null && cd {tree}/mnt && cat plain >/dev/null")[0] == 0
        # relative unlinks: the directory's names decide (the name alone cannot)
        assert a.run(f"cd {tree}/ruled/sub && rm y && cd {tree}/mnt && rm plain2")[0] == 0
        # relative names of several components: their own names, then their directory's, decide
        assert a.run(f"cd {tree} && echo z > ruled/z && rm ruled/z && cd {tree}/mnt && mkdir -p a/b && echo c > a/b/c"
                     f" && rm a/b/c")[0] == 0
        # failed relative opens: decided the same way, but a refused one is always emitted
        assert a.run(f"cd {tree}/ruled && cat gone1; cd {tree} && cat ruled/gone2; cd {tree}/mnt && cat a/gone3;"
                     f" echo l > locked && chmod 000 locked && setpriv --reuid=65534 --regid=65534 --clear-groups"
                     f" cat locked; true")[0] == 0
        # a process holding 70 descriptors: the open lands past the embedded table, the trie decides
        script = tree / "many_fds.py"
        script.write_text(f"import os\nheld = [os.open({str(tree / 'other')!r}, 0) for _ in range(70)]\n"
                          f"os.close(os.open({str(tree / 'secret')!r}, 0))\n")
        assert a.run(f"/usr/bin/python3 {script}")[0] == 0
        # fchown names no path: the descriptor's file decides by its names
        script.write_text(f"import os\nfor p in ({str(tree / 'other')!r}, {str(tree / 'secret')!r}):\n"
                          f"    fd = os.open(p, 0); os.fchown(fd, -1, -1); os.close(fd)\n")
        def fchowns() -> int:
            mon.drain()
            return sum(1 for rec in records if SYS_HEAD.unpack_from(rec)[22] == NR_FCHOWN
                       and SYS_HEAD.unpack_from(rec)[_MNTNS] == a.mntns)

        before = fchowns()
        assert a.run(f"/usr/bin/python3 {script}")[0] == 0
        assert fchowns() - before == (1 if _names_prefilter(mon) else 2)       # secret's, not other's
        seen = _file_events(mon, records)
        for name in opens + [f"{tree}/secret"]:
            assert [m for m, ret in seen.get(name.encode(), []) if ret >= 0], f"{name} not emitted: {sorted(seen)}"
        if _names_prefilter(mon):
            assert str(tree / "other").encode() not in seen
        assert [m for m, ret in seen.get(b"x", []) if ret >= 0] == [a.mntns]
        if _names_prefilter(mon):
            assert b"plain" not in seen
        assert [m for m, ret in seen.get(b"y", []) if ret >= 0] == [a.mntns]      # unlink under the ruled dir
        if _names_prefilter(mon):
            assert b"plain2" not in seen
        assert [m for m, ret in seen.get(b"ruled/z", []) if ret >= 0] == [a.mntns] * 2  # the open, the unlink
        if _names_prefilter(mon):
            assert b"a/b/c" not in seen
        assert [ret for _m, ret in seen.get(b"gone1", [])] == [-errno.ENOENT]
        assert [ret for _m, ret in seen.get(b"ruled/gone2", [])] == [-errno.ENOENT]
        if _names_prefilter(mon):
            assert b"a/gone3" not in seen
        locked = [ret for _m, ret in seen.get(b"locked", [])]
        assert -errno.EACCES in locked                                              # refused: always
        if _names_prefilter(mon):
            assert locked == [-errno.EACCES]     # the shell's successful create of it was not ruled: filtered
    finally:
        a.run(f"umount {tree}/ruled/sub; umount {tree}/mnt")
        a.close()

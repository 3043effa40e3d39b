"""Where the signal enforcer links its cgroup socket program: the root of the cgroup v2 hierarchy."""
from __future__ import annotations

from pathlib import Path

from services.enforcer.signal.cgroup_link import cgroup2_root

HYBRID = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
"""
UNIFIED = "30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
# a container's view: its own cgroup bound over /sys/fs/cgroup, not the hierarchy's root
SUBTREE = "40 1 0:26 /docker/abc /sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw\n"
V1_ONLY = "27 25 0:24 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory\n"
ESCAPED = "30 1 0:26 / /mnt/my\\040cgroup rw,relatime - cgroup2 cgroup2 rw\n"


def _root(tmp_path: Path, text: str) -> tuple[Path | None, str]:
    info = tmp_path / "mountinfo"
    info.write_text(text)
    return cgroup2_root(info)


def test_the_v2_hierarchy_root_is_found_on_hybrid_and_unified_hosts(tmp_path: Path) -> None:
    assert _root(tmp_path, HYBRID) == (Path("/sys/fs/cgroup/unified"), "")
    assert _root(tmp_path, UNIFIED) == (Path("/sys/fs/cgroup"), "")
    assert _root(tmp_path, ESCAPED) == (Path("/mnt/my cgroup"), "")


def test_a_subtree_or_no_v2_mount_says_why(tmp_path: Path) -> None:
    for text in (SUBTREE, V1_ONLY, ""):
        root, why = _root(tmp_path, text)
        assert root is None and "no cgroup v2 hierarchy" in why
    root, why = cgroup2_root(tmp_path / "missing")
    assert root is None and "missing" in why

"""The BPF-LSM enforcer's own path walk (bpf/include/bw_lsm_path.h), which stands in for bpf_d_path on
kernels that refuse that helper in LSM hooks (5.10), gives the paths d_path would.

LSM programs cannot load on every kernel, so the walk runs here on the ``openat`` exit tracepoint, on
the struct file the new descriptor names (the same struct path, the same helpers), only for a child
process this test starts; the paths it opens cross mounts (procfs, tmpfs, devtmpfs) and go deep. The
guests' BPF-LSM tests run the walk in the LSM hooks themselves where the kernel needs it.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.enforcer.signal.enforcer import BPF_DIR, prepare_bcc
from shared.bpf.abi import BW_LSM_PATH

pytestmark = [pytest.mark.usefixtures("as_root")]

PROGRAM = r"""
#include "events.h"
#include "bw_read.h"
#include "bw_lsm_path.h"

struct walk_out {
	__s64 n;
	char path[BW_LSM_PATH];
};

BPF_PERCPU_ARRAY(walks, struct bw_lsm_walk, 1);
BPF_HASH(watched, __u32, __u32, 1);
BPF_RINGBUF_OUTPUT(outs, 16);

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32, zero = 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = NULL;
	struct fdtable *fdt = NULL;
	struct file **fds = NULL;
	struct file *file = NULL;
	struct bw_lsm_walk *w;
	struct walk_out *o;
	long fd = args->ret;

	if (!watched.lookup(&tgid) || fd < 0)
		return 0;
	BW_READ(files, task, files);
	if (!files)
		return 0;
	BW_READ(fdt, files, fdt);
	if (!fdt)
		return 0;
	BW_READ(fds, fdt, fd);
	if (!fds)
		return 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd & 0xFFFF]);
	if (!file)
		return 0;
	w = walks.lookup(&zero);
	if (!w)
		return 0;
	o = outs.ringbuf_reserve(sizeof(*o));
	if (!o)
		return 0;
	o->n = bw_lsm_walk_path(w, (struct path *)((char *)file + __builtin_offsetof(struct file, f_path)), o->path);
	outs.ringbuf_submit(o, 0);
	return 0;
}
"""

OPENER = "import os, sys\nsys.stdin.readline()\nfor p in sys.argv[1:]:\n    os.close(os.open(p, os.O_RDONLY))\n"


class WalkOut(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int64), ("path", ctypes.c_char * BW_LSM_PATH)]


def test_the_walk_gives_the_paths_d_path_would(btf_tree: Path, tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(f"level{i}" for i in range(12)))
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("x")
    shm = Path("/dev/shm") / f"bulwark-walk-{os.getpid()}"
    shm.write_text("y")
    too_long = tmp_path.joinpath(*(["d" * 60] * 4))
    too_long.mkdir(parents=True)
    (too_long / "f").write_text("z")
    wanted = ["/etc/hostname", str(deep / "leaf.txt"), "/proc/self/status", "/dev/null", str(shm),
              str(too_long / "f"), "/"]
    prepare_bcc(btf_tree)
    from bcc import BPF

    bpf = BPF(text=PROGRAM.encode(), cflags=[f"-I{BPF_DIR / 'include'}"])
    child = subprocess.Popen([sys.executable, "-c", OPENER, *wanted], stdin=subprocess.PIPE)
    got: list[tuple[int, str]] = []
    try:
        bpf["watched"][ctypes.c_uint32(child.pid)] = ctypes.c_uint32(1)

        def on_record(_ctx: object, data: int, _size: int) -> None:
            out = ctypes.cast(data, ctypes.POINTER(WalkOut)).contents
            got.append((out.n, out.path.decode(errors="replace")))

        bpf["outs"].open_ring_buffer(on_record)
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.close()
        assert child.wait(timeout=60) == 0
        bpf.ring_buffer_poll(timeout=1000)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        bpf.cleanup()
        shm.unlink()
    real = {p: os.path.realpath(p.replace("/self/", f"/{child.pid}/")) for p in wanted}
    for path, expected in real.items():
        if len(expected) + 1 > BW_LSM_PATH:
            assert any(n == -1 for n, _ in got), f"{path}: too long, yet walked: {got}"
            continue
        assert (len(expected) + 1, expected) in got, f"{path}: expected {expected!r} among {got}"

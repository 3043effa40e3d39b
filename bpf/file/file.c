/* File events: open/openat/openat2, unlink/unlinkat/rmdir, chown/lchown/fchown/fchownat. Opens are
 * handled at exit only (bwmon_open_x); for the others the path is read at enter (with the directory a
 * relative one is resolved against), the result at exit. A mount namespace may want only the paths
 * its rules name (BW_VIS_FILE_PATHS): that is decided from the path argument first, before any
 * record is built. */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"
#include "bw_names.h"

struct bw_open_how {                         /* uapi struct open_how */
	__u64 flags;
	__u64 mode;
	__u64 resolve;
};

#define BW_NR_OPEN 2                         /* x86_64 */
#define BW_NR_OPENAT2 437
#define BW_EPERM 1
#define BW_EACCES 13

/* Whether the caller's file event with path argument `name` (relative to `fd`) is emitted
 * (non-zero: its visible file bits); its mntns into *mntns. In a namespace that wants only named
 * paths, the names of a file decide where the path cannot (bw_names.h): the file open as `fd` when
 * there is no name (fchown), the directory `fd` when the name is relative. One walk serves both. */
static __always_inline __u32 bw_file_gate(struct task_struct *task, __u32 *mntns, const char *name,
					  long fd)
{
	__u32 bits;

	*mntns = bw_current_mntns(task);
	bits = bw_vis_bits(task, *mntns, BW_VIS_FILE | BW_VIS_FILE_PATHS);
	if (!bits || (bits & BW_VIS_FILE))
		return bits;
	if (name) {
		int listed = bw_file_wanted(bits, *mntns, name);

		if (listed != BW_PATH_RELATIVE)
			return listed ? bits : 0;
	}
	if (bw_fd_names_listed(task, fd))
		return bits;
	bw_stat(BW_STAT_FILTERED);
	bw_stat(BW_STAT_FILTERED_NAMES);
	return 0;
}

static __always_inline int bw_file_enter(struct bw_tp_sys_enter *ctx, long dirfd, const char *name,
					 __s64 a1, __s64 a2, __s64 a3, __u16 flags)
{
	struct task_struct *task = bw_current();
	struct bw_sys_event *e;
	__u32 mntns;

	if (!bw_file_gate(task, &mntns, name, dirfd))
		return 0;
	e = bw_sys_stash_begin(BW_OP_FILE, ctx->syscall_nr, mntns);
	if (!e)
		return 0;
	e->args[0] = dirfd;
	e->args[1] = a1;
	e->args[2] = a2;
	e->args[3] = a3;
	e->flags |= flags;
	if (name)
		bw_sys_name_at(e, task, name, dirfd);
	else
		bw_sys_dir(e, task, dirfd);
	bw_sys_stash_put(e);
	return 0;
}

int bwmon_unlink_e(struct bw_tp_sys_enter *ctx)   /* unlink, rmdir: (pathname) */
{
	return bw_file_enter(ctx, BW_AT_FDCWD, (const char *)ctx->args[0], 0, 0, 0, 0);
}

int bwmon_unlnkat_e(struct bw_tp_sys_enter *ctx)  /* (dfd, pathname, flag) */
{
	return bw_file_enter(ctx, (int)ctx->args[0], (const char *)ctx->args[1], ctx->args[2], 0, 0, 0);
}

int bwmon_chown_e(struct bw_tp_sys_enter *ctx)    /* chown, lchown: (filename, user, group) */
{
	return bw_file_enter(ctx, BW_AT_FDCWD, (const char *)ctx->args[0], (__u32)ctx->args[1],
			     (__u32)ctx->args[2], 0, 0);
}

int bwmon_fchown_e(struct bw_tp_sys_enter *ctx)   /* (fd, user, group): the fd's own path */
{
	return bw_file_enter(ctx, (int)ctx->args[0], NULL, (__u32)ctx->args[1], (__u32)ctx->args[2], 0, 0);
}

int bwmon_fchowat_e(struct bw_tp_sys_enter *ctx)  /* (dfd, filename, user, group, flag) */
{
	return bw_file_enter(ctx, (int)ctx->args[0], (const char *)ctx->args[1], (__u32)ctx->args[2],
			     (__u32)ctx->args[3], ctx->args[4], 0);
}

/* The open's path argument, from the caller's saved registers (x86_64: di, si, dx, r10). */
static __always_inline const char *bw_open_name(struct pt_regs *regs, __s32 nr)
{
	unsigned long di = 0, si = 0;

	BW_REG(di, regs, di);
	BW_REG(si, regs, si);
	return (const char *)(nr == BW_NR_OPEN ? di : si);
}

/* The directory an open's relative name is resolved against (x86_64: the first register). */
static __always_inline long bw_open_dirfd(struct pt_regs *regs, __s32 nr)
{
	unsigned long di = 0;

	BW_REG(di, regs, di);
	return nr == BW_NR_OPEN ? BW_AT_FDCWD : (int)di;
}

/* The open's other arguments, from the same registers: args[0..3] = dirfd, flags, mode, resolve.
 * The registers are loaded before any branch: a load merged from the stack (open_how) and from the
 * registers would be one instruction with two pointer types, which the verifier refuses. */
static __always_inline void bw_open_args(struct bw_sys_event *e, struct pt_regs *regs, __s32 nr)
{
	__u64 si = 0, dx = 0, r10 = 0;
	struct bw_open_how how = {};

	BW_REG(si, regs, si);
	BW_REG(dx, regs, dx);
	BW_REG(r10, regs, r10);

	e->args[0] = bw_open_dirfd(regs, nr);
	if (nr == BW_NR_OPEN) {
		e->args[1] = si;
		e->args[2] = dx;
		return;
	}
	if (nr == BW_NR_OPENAT2) {
		bpf_probe_read_user(&how, sizeof(how), (void *)dx);
		e->args[1] = how.flags;
		e->args[2] = how.mode;
		e->args[3] = how.resolve;
	} else {
		e->args[1] = dx;
		e->args[2] = r10;
	}
}

/* The open's syscall number and result. Without the name prefilter, clang keeps &ctx->syscall_nr in
 * a register across calls and the verifier refuses a load through a modified ctx pointer (6.1,
 * 6.12): there the context is copied first. With the prefilter, the copies cost the verifier more
 * than its budget (the walk's states multiply), and the plain reads load. */
#ifdef BW_NAMES_PREFILTER
#define BW_OPEN_NR (ctx->syscall_nr)
#define BW_OPEN_RET (ctx->ret)
#else
#define BW_OPEN_NR nr
#define BW_OPEN_RET ret
#endif
/* open, openat, openat2, at exit only: the syscall's arguments are still in the caller's saved
 * registers, and its path is in memory the kernel has just read (so it is paged in). No enter
 * program and no per-thread stash: an open that is not visible costs at most one hash lookup. In a
 * namespace that wants only named paths, the names decide first (bw_names.h): a successful open's
 * file, or for a failed one the directory a relative name is resolved against, is walked once
 * (one walk site: two exceed the verifier's budget); a successful open whose names are not listed
 * ends there, without the user read; any other reads its name for the trie, and a failed relative
 * one whose own names and directory's names are not listed is dropped, unless it was refused
 * (EPERM, EACCES): a blocked attempt through a symlink the names cannot see is still reported. */
int bwmon_open_x(struct bw_tp_sys_exit *ctx)
{
#ifndef BW_NAMES_PREFILTER
	__s32 nr = ctx->syscall_nr;              /* BW_OPEN_NR, BW_OPEN_RET: see above */
	long ret = ctx->ret;
#endif
	struct task_struct *task;
	__u32 mntns, bits;
	struct pt_regs *regs = NULL;
	struct bw_sys_event *e;
	const char *name;
	int dir_listed = 1, listed;

	task = bw_current();
	mntns = bw_current_mntns(task);
	bits = bw_vis_bits(task, mntns, BW_VIS_FILE | BW_VIS_FILE_PATHS);
	if (!bits)
		return 0;
	if (!(bits & BW_VIS_FILE)) {
		long fd = BW_OPEN_RET;

		if (fd < 0) {
			regs = bw_task_regs(task);
			fd = bw_open_dirfd(regs, BW_OPEN_NR);
		}
		dir_listed = bw_fd_names_listed(task, fd);
		if (BW_OPEN_RET >= 0 && !dir_listed) {
			bw_stat(BW_STAT_FILTERED);
			bw_stat(BW_STAT_FILTERED_NAMES);
			return 0;
		}
	}
	if (!regs)
		regs = bw_task_regs(task);
	name = bw_open_name(regs, BW_OPEN_NR);
	listed = bw_file_wanted(bits, mntns, name);
	if (!listed)
		return 0;
	if (listed == BW_PATH_RELATIVE && BW_OPEN_RET < 0 && !dir_listed && BW_OPEN_RET != -BW_EPERM &&
	    BW_OPEN_RET != -BW_EACCES) {
		bw_stat(BW_STAT_FILTERED);
		bw_stat(BW_STAT_FILTERED_NAMES);
		return 0;
	}
	e = bw_sys_scratch_begin(BW_OP_FILE, BW_OPEN_NR, mntns);
	if (!e)
		return 0;
	bw_open_args(e, regs, BW_OPEN_NR);
	e->ret = BW_OPEN_RET;
	e->flags |= BW_SYS_F_OPEN;
	bw_sys_name(e, name);
	bw_sys_dir(e, task, e->args[0]);
	if (BW_OPEN_RET >= 0 && bw_want(BW_CFG_OWNER))
		bw_sys_owner(e, task, BW_OPEN_RET);
	bw_sys_finish(e, task);
	return 0;
}

/* Every stashed syscall record's exit (file, network but accept, setuid family, ptrace, mount). */
int bwmon_sys_x(struct bw_tp_sys_exit *ctx)
{
	return bw_sys_exit_common(ctx->ret, ctx->syscall_nr);
}

/* File events: open/openat/openat2, unlink/unlinkat/rmdir, chown/lchown/fchown/fchownat. Opens are
 * handled at exit only (bwmon_open_x); for the others the path is read at enter (with the directory a
 * relative one is resolved against), the result at exit. */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"

struct bw_open_how {                         /* uapi struct open_how */
	__u64 flags;
	__u64 mode;
	__u64 resolve;
};

#define BW_NR_OPEN 2                         /* x86_64 */
#define BW_NR_OPENAT2 437

static __always_inline int bw_file_enter(struct bw_tp_sys_enter *ctx, long dirfd, const char *name,
					 __s64 a1, __s64 a2, __s64 a3, __u16 flags)
{
	struct task_struct *task = bw_current();
	struct bw_sys_event *e = bw_sys_enter_begin(BW_OP_FILE, BW_VIS_FILE, ctx->syscall_nr, task);

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

/* The open's arguments, from the caller's saved registers (x86_64: di, si, dx, r10): args[0..3] =
 * dirfd, flags, mode, resolve; returns the path argument. */
static __always_inline const char *bw_open_args(struct bw_sys_event *e, struct pt_regs *regs, __s32 nr)
{
	struct bw_open_how how = {};

	if (nr == BW_NR_OPEN) {
		e->args[0] = BW_AT_FDCWD;
		e->args[1] = regs->si;
		e->args[2] = regs->dx;
		return (const char *)regs->di;
	}
	e->args[0] = (int)regs->di;
	if (nr == BW_NR_OPENAT2) {
		bpf_probe_read_user(&how, sizeof(how), (void *)regs->dx);
		e->args[1] = how.flags;
		e->args[2] = how.mode;
		e->args[3] = how.resolve;
	} else {
		e->args[1] = regs->dx;
		e->args[2] = regs->r10;
	}
	return (const char *)regs->si;
}

/* open, openat, openat2, at exit only: the syscall's arguments are still in the caller's saved
 * registers, and its path is in memory the kernel has just read (so it is paged in). No enter
 * program and no per-thread stash: an open that is not visible costs at most one hash lookup. */
int bwmon_open_x(struct bw_tp_sys_exit *ctx)
{
	struct task_struct *task = bw_current();
	struct bw_sys_event *e = bw_sys_begin(BW_OP_FILE, BW_VIS_FILE, ctx->syscall_nr, task);
	const char *name;

	if (!e)
		return 0;
	name = bw_open_args(e, (struct pt_regs *)bpf_task_pt_regs(task), ctx->syscall_nr);
	e->ret = ctx->ret;
	e->flags |= BW_SYS_F_OPEN;
	bw_sys_name(e, name);
	bw_sys_dir(e, task, e->args[0]);
	if (ctx->ret >= 0 && bw_want(BW_CFG_OWNER))
		bw_sys_owner(e, task, ctx->ret);
	bw_sys_finish(e, task);
	return 0;
}

/* Every stashed syscall record's exit (file, network but accept, setuid family, ptrace, mount). */
int bwmon_sys_x(struct bw_tp_sys_exit *ctx)
{
	return bw_sys_exit_common(ctx->ret, ctx->syscall_nr);
}

/* File events: open/openat/openat2, unlink/unlinkat/rmdir, chown/lchown/fchown/fchownat. The path
 * is read at enter (with the directory a relative one is resolved against), the result at exit. */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"

struct bw_open_how {                         /* uapi struct open_how */
	__u64 flags;
	__u64 mode;
	__u64 resolve;
};

static __always_inline int bw_file_enter(struct bw_tp_sys_enter *ctx, long dirfd, const char *name,
					 __s64 a1, __s64 a2, __s64 a3, __u16 flags)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
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

int bwmon_open_e(struct bw_tp_sys_enter *ctx)
{
	return bw_file_enter(ctx, BW_AT_FDCWD, (const char *)ctx->args[0], ctx->args[1], ctx->args[2], 0,
			     BW_SYS_F_OPEN);
}

int bwmon_openat_e(struct bw_tp_sys_enter *ctx)
{
	return bw_file_enter(ctx, (int)ctx->args[0], (const char *)ctx->args[1], ctx->args[2],
			     ctx->args[3], 0, BW_SYS_F_OPEN);
}

int bwmon_opat2_e(struct bw_tp_sys_enter *ctx)
{
	struct bw_open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return bw_file_enter(ctx, (int)ctx->args[0], (const char *)ctx->args[1], how.flags, how.mode,
			     how.resolve, BW_SYS_F_OPEN);
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

/* Every stashed syscall record's exit (file, network but accept, setuid family, ptrace, mount). */
int bwmon_sys_x(struct bw_tp_sys_exit *ctx)
{
	return bw_sys_exit_common(ctx->ret, ctx->syscall_nr);
}

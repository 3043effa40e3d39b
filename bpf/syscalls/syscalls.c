/* Syscall records: the setuid/setgid family, ptrace, mount/umount2 (always, when process or syscall
 * events are visible), and any syscall a policy names through raw_syscalls (bw_sys_wanted). */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"

#define BW_VIS_PROC_OR_SYS (BW_VIS_PROCESS | BW_VIS_SYSCALL)

/* setuid family, ptrace: their numeric arguments. A program may not read past its tracepoint's
 * record (the attach fails), so there is one entry point per argument count. */
static __always_inline int bw_setid(struct bw_tp_sys_enter *ctx, int nargs)
{
	struct task_struct *task = bw_current();
	struct bw_sys_event *e = bw_sys_enter_begin(BW_OP_SYSCALL, BW_VIS_PROC_OR_SYS, ctx->syscall_nr, task);

	if (!e)
		return 0;
	e->args[0] = ctx->args[0];
	if (nargs > 1)
		e->args[1] = ctx->args[1];
	if (nargs > 2)
		e->args[2] = ctx->args[2];
	bw_sys_stash_put(e);
	return 0;
}

int bwmon_setid1_e(struct bw_tp_sys_enter *ctx) { return bw_setid(ctx, 1); }  /* setuid, setgid */
int bwmon_setid2_e(struct bw_tp_sys_enter *ctx) { return bw_setid(ctx, 2); }  /* setre[ug]id, ptrace */
int bwmon_setid3_e(struct bw_tp_sys_enter *ctx) { return bw_setid(ctx, 3); }  /* setres[ug]id */

/* mount(dev_name, dir_name, type, flags, data): name = target, aux = source \0 fstype */
int bwmon_mount_e(struct bw_tp_sys_enter *ctx)
{
	struct task_struct *task = bw_current();
	struct bw_sys_event *e = bw_sys_enter_begin(BW_OP_SYSCALL, BW_VIS_PROC_OR_SYS, ctx->syscall_nr, task);

	if (!e)
		return 0;
	e->args[3] = ctx->args[3];
	e->args[0] = BW_AT_FDCWD;
	bw_sys_name(e, (const char *)ctx->args[1]);
	bw_sys_dir(e, task, BW_AT_FDCWD);
	if (ctx->args[0] && bpf_probe_read_user_str(e->aux, BW_MOUNT_SOURCE_LEN, (const void *)ctx->args[0]) > 0)
		e->flags |= BW_SYS_F_AUX_STR;
	if (ctx->args[2])
		bpf_probe_read_user_str(e->aux + BW_MOUNT_SOURCE_LEN, BW_SYS_AUX_LEN - BW_MOUNT_SOURCE_LEN, (const void *)ctx->args[2]);
	e->aux_len = sizeof(e->aux);
	bw_sys_stash_put(e);
	return 0;
}

int bwmon_umount_e(struct bw_tp_sys_enter *ctx)   /* umount2(target, flags) */
{
	struct task_struct *task = bw_current();
	struct bw_sys_event *e = bw_sys_enter_begin(BW_OP_SYSCALL, BW_VIS_PROC_OR_SYS, ctx->syscall_nr, task);

	if (!e)
		return 0;
	e->args[0] = BW_AT_FDCWD;
	e->args[1] = ctx->args[1];
	bw_sys_name_at(e, task, (const char *)ctx->args[0], BW_AT_FDCWD);
	bw_sys_stash_put(e);
	return 0;
}

/* raw_syscalls: only the numbers user space put in bw_sys_wanted (attached only when it has any). */
int bwmon_raw_e(struct bw_tp_raw_sys_enter *ctx)
{
	struct task_struct *task;
	struct bw_sys_event *e;
	__u32 nr = ctx->id, tid;
	__u8 *want;
	long dirfd = BW_AT_FDCWD;

	if (ctx->id < 0 || nr >= 512)
		return 0;
	want = bw_sys_wanted.lookup(&nr);
	if (!want || !*want)
		return 0;
	__u8 w = *want;
	task = bw_current();
	e = bw_sys_begin(BW_OP_SYSCALL, BW_VIS_SYSCALL, nr, task);
	if (!e)
		return 0;
	for (int i = 0; i < 6; i++)
		e->args[i] = ctx->args[i];
	__u32 pidx = (w >> 1) & 7;
	if (w & 16)
		dirfd = (int)e->args[0];
	if (pidx >= 1 && pidx <= 6) {
		const char *name = NULL;

		switch (pidx) {
		case 1: name = (const char *)e->args[0]; break;
		case 2: name = (const char *)e->args[1]; break;
		case 3: name = (const char *)e->args[2]; break;
		case 4: name = (const char *)e->args[3]; break;
		case 5: name = (const char *)e->args[4]; break;
		default: name = (const char *)e->args[5]; break;
		}
		bw_sys_name_at(e, task, name, dirfd);
	}
	tid = (__u32)bpf_get_current_pid_tgid();
	if (bw_raw_stash.update(&tid, e))
		bw_stat(BW_STAT_STASH_FULL);
	return 0;
}

int bwmon_raw_x(struct bw_tp_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct bw_sys_event *e = bw_raw_stash.lookup(&tid);

	if (!e)
		return 0;
	if (e->syscall == (__s32)ctx->id) {
		struct task_struct *task = bw_current();

		e->ret = ctx->ret;
		bw_sys_name_retry(e, task);
		bw_sys_finish(e, task);
	} else {
		bw_stat(BW_STAT_STALE_STASH);
	}
	bw_raw_stash.delete(&tid);
	return 0;
}

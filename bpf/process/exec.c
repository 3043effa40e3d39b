/* Exec events with their result: stash the caller at sys_enter_execve{,at}, emit at sys_exit. */
#include "events.h"
#include "bw_tp.h"
#include "bw_maps.h"
#include "bw_emit.h"

BPF_TABLE("lru_hash", __u32, struct bw_exec_event, bw_exec_stash, 1024);
BPF_ARRAY(bw_exec_zero, struct bw_exec_event, 1);

static __always_inline int bw_exec_enter(const char *filename, __u32 syscall, __s32 dirfd, __u32 at_flags)
{
	__u64 id = bpf_get_current_pid_tgid(), ugid = bpf_get_current_uid_gid();
	__u32 tid = (__u32)id, zero_key = 0;
	struct task_struct *task = bw_current();
	struct bw_exec_event *zero = bw_exec_zero.lookup(&zero_key), *e;
	struct task_struct *parent = NULL;
	struct bw_ids ids = {};
	__u32 mntns = bw_current_mntns(task);

	if (!bw_visible(task, mntns, BW_VIS_PROCESS))
		return 0;
	if (!zero || bw_exec_stash.update(&tid, zero)) {
		bw_stat(BW_STAT_STASH_FULL);
		return 0;
	}
	e = bw_exec_stash.lookup(&tid);
	if (!e)
		return 0;
	e->hdr.op = BW_OP_EXEC;
	e->hdr.size = sizeof(*e);
	e->hdr.ktime = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->tid = tid;
	e->uid = (__u32)ugid;
	e->gid = ugid >> 32;
	e->syscall = syscall;
	e->dirfd = dirfd;
	e->at_flags = at_flags;
	e->cgroup_id = bpf_get_current_cgroup_id();
	bw_task_ids(task, &ids);
	e->ppid = ids.ppid;
	e->ns_pid = ids.ns_pid;
	e->ns_ppid = ids.ns_ppid;
	e->pidns = ids.pidns;
	e->mntns = mntns;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	long n = bpf_probe_read_user_str(e->filename, sizeof(e->filename), filename);
	if (n >= (long)sizeof(e->filename))
		e->flags |= BW_EXEC_FILENAME_TRUNCATED;
	bw_task_exe(&e->exe, task);
	BW_READ(parent, task, real_parent);
	if (parent)
		bw_task_exe(&e->parent_exe, parent);
	bw_task_cwd(&e->cwd, task);
	bw_task_tty(e->tty, task);
	return 0;
}

static __always_inline int bw_exec_exit(long ret, __s32 nr)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct bw_exec_event *e;

	bw_preset_exec_exit(ret, nr);            /* bpf/presets/presets.c */
	e = bw_exec_stash.lookup(&tid);
	if (!e) {
		bw_stat(BW_STAT_NO_STASH);
		return 0;
	}
	e->ret = ret;
	if (bw_events.ringbuf_output(e, sizeof(*e), BW_RB_FLAGS)) {
		bw_stat(BW_STAT_LOST);
		bw_stat(BW_STAT_LOST_OP + BW_OP_EXEC);
	} else {
		bw_stat(BW_STAT_EMITTED);
	}
	bw_exec_stash.delete(&tid);
	return 0;
}

int bwmon_ex_enter(struct bw_tp_sys_enter *ctx)
{
	return bw_exec_enter((const char *)ctx->args[0], BW_SYS_EXECVE, BW_AT_FDCWD, 0);
}

int bwmon_exat_ent(struct bw_tp_sys_enter *ctx)
{
	return bw_exec_enter((const char *)ctx->args[1], BW_SYS_EXECVEAT, (__s32)ctx->args[0],
			     (__u32)ctx->args[4]);
}

int bwmon_ex_exit(struct bw_tp_sys_exit *ctx)
{
	return bw_exec_exit(ctx->ret, ctx->syscall_nr);
}

int bwmon_exat_exit(struct bw_tp_sys_exit *ctx)
{
	return bw_exec_exit(ctx->ret, ctx->syscall_nr);
}

/* A successful exec by a non-leader thread changes its tid to the tgid (de_thread): move the stash.
 * Also the fallback for a filename the user-space read could not fetch, the end of the process's
 * cached identity (its next record announces the new exe), and where the exec presets look at the
 * new program (bpf/presets/presets.c). */
int bwmon_sched_ex(struct bw_tp_sched_process_exec *ctx)
{
	__u32 old_tid = ctx->old_pid, tid = ctx->pid, tgid = bpf_get_current_pid_tgid() >> 32;
	struct bw_exec_event *e = bw_exec_stash.lookup(&old_tid);

	bw_procs.delete(&tgid);
	bw_preset_exec(ctx);
	if (!e)
		return 0;
	if (e->filename[0] == 0) {
		bpf_probe_read_kernel_str(e->filename, sizeof(e->filename),
					  (char *)ctx + (ctx->filename_loc & 0xFFFF));
		e->flags |= BW_EXEC_FILENAME_FROM_KERNEL;
	}
	if (old_tid != tid) {
		bw_exec_stash.update(&tid, e);
		bw_exec_stash.delete(&old_tid);
	}
	return 0;
}

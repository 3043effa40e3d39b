/* Process lifecycle: fork (a new process, not a thread) and exit (the last thread of a process;
 * every exiting thread frees its syscall slot). */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"

/* raw_tp sched_process_fork(parent, child), in the parent's context, before the child can run. */
int bwmon_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	struct task_struct *task = bw_current();
	struct bw_sys_event *e;
	struct bw_ids ids = {};
	int pid = 0, tgid = 0;

	BW_READ(pid, child, pid);
	BW_READ(tgid, child, tgid);
	if (pid != tgid)
		return 0;                            /* a new thread */
	e = bw_sys_begin(BW_OP_FORK, BW_VIS_PROCESS, -1, task);
	if (!e)
		return 0;
	bw_task_ids(child, &ids);
	e->args[0] = tgid;
	e->args[1] = ids.ns_pid;
	e->ret = tgid;
	bw_sys_finish(e, task);
	return 0;
}

int bwmon_exit(struct bw_tp_sched_process_exit *ctx)
{
	struct task_struct *task = bw_current();
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct bw_sys_event *e;
	int code = 0;

	bw_sys_stash.delete(&tid);               /* the thread's syscall slot */
#ifndef BW_EXIT_NO_GROUP_DEAD
	if (!ctx->group_dead)
		return 0;
#else
	{
		/* no group_dead in this kernel's tracepoint: do_exit() has already counted this thread
		 * out of signal->live, so 0 there means it was the group's last one */
		struct signal_struct *sig = NULL;
		int live = 1;

		BW_READ(sig, task, signal);
		if (sig)
			BW_READ(live, sig, live.counter);
		if (live)
			return 0;
	}
#endif
	e = bw_sys_begin(BW_OP_EXIT, BW_VIS_PROCESS, -1, task);
	if (e) {
		BW_READ(code, task, exit_code);
		e->args[0] = code;
		e->ret = code;
		bw_sys_finish(e, task);
	}
	bw_procs.delete(&tgid);
	return 0;
}

/* Task identity: host and namespaced pids, namespaces. */
#ifndef BW_TASK_H
#define BW_TASK_H

#include "bw_read.h"

/* The current task as a BTF pointer: its members are read with plain loads that the verifier turns
 * into fault-safe PROBE_MEM loads (a few instructions each, no helper call; bcc leaves them alone).
 * Only ever dereference it directly: a task pointer of any other origin goes through BW_READ. */
static __always_inline struct task_struct *bw_current(void)
{
	return bpf_get_current_task_btf();
}

/* Mount namespace of bw_current() (0 once nsproxy is released, at exit). */
static __always_inline __u32 bw_current_mntns(struct task_struct *cur)
{
	struct nsproxy *nsp = cur->nsproxy;

	if (!nsp)
		return 0;
	return nsp->mnt_ns->ns.inum;
}

/* The same for a task of any origin, with explicit reads. */
static __always_inline __u32 bw_task_mntns(struct task_struct *task)
{
	struct nsproxy *nsp = NULL;
	struct mnt_namespace *mnt_ns = NULL;
	unsigned int inum = 0;

	BW_READ(nsp, task, nsproxy);
	if (!nsp)
		return 0;
	BW_READ(mnt_ns, nsp, mnt_ns);
	if (!mnt_ns)
		return 0;
	BW_READ(inum, mnt_ns, ns.inum);
	return inum;
}

/* struct pid of the task's thread group (its leader's thread_pid). */
static __always_inline struct pid *bw_task_tgid_pid(struct task_struct *task)
{
	struct task_struct *leader = NULL;
	struct pid *pid = NULL;

	BW_READ(leader, task, group_leader);
	if (!leader)
		leader = task;
	BW_READ(pid, leader, thread_pid);
	return pid;
}

/* The upid of `pid` at `level` (nr 0 / ns NULL when pid is not that deep). */
static __always_inline void bw_pid_at(struct pid *pid, __u32 level, struct upid *out)
{
	unsigned int plevel = 0;

	out->nr = 0;
	out->ns = NULL;
	if (!pid)
		return;
	BW_READ(plevel, pid, level);
	if (level > plevel)
		return;
	bpf_probe_read_kernel(out, sizeof(*out), &pid->numbers[level]);
}

struct bw_ids {
	__u32 ns_pid;
	__u32 ns_ppid;
	__u32 pidns;
	__u32 ppid;
};

/* Namespaced pid/ppid and the active pid namespace of `task`. */
static __always_inline void bw_task_ids(struct task_struct *task, struct bw_ids *ids)
{
	struct pid *pid = bw_task_tgid_pid(task);
	struct task_struct *parent = NULL;
	struct upid own = {}, par = {};
	unsigned int level = 0, inum = 0;
	int ptgid = 0;

	ids->ns_pid = ids->ns_ppid = ids->pidns = ids->ppid = 0;
	if (!pid)
		return;
	BW_READ(level, pid, level);
	bw_pid_at(pid, level, &own);
	ids->ns_pid = own.nr;
	if (own.ns) {
		BW_READ(inum, own.ns, ns.inum);
		ids->pidns = inum;
	}
	BW_READ(parent, task, real_parent);
	if (!parent)
		return;
	BW_READ(ptgid, parent, tgid);
	ids->ppid = ptgid;
	bw_pid_at(bw_task_tgid_pid(parent), level, &par);
	if (par.ns && par.ns == own.ns)
		ids->ns_ppid = par.nr;
}

#endif /* BW_TASK_H */

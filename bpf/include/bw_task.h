/* Task identity: host and namespaced pids, namespaces. */
#ifndef BW_TASK_H
#define BW_TASK_H

#include "bw_read.h"

/* The current task as a BTF pointer: its members are read with plain loads that the verifier turns
 * into fault-safe PROBE_MEM loads (a few instructions each, no helper call; bcc leaves them alone).
 * Only ever dereference it with BW_LOAD: a task pointer of any other origin goes through BW_READ.
 * Kernels before 5.11 have no bpf_get_current_task_btf(): there it is a plain address and BW_LOAD
 * reads explicitly. */
static __always_inline struct task_struct *bw_current(void)
{
#ifdef BW_TASK_BTF
	return bpf_get_current_task_btf();
#else
	return (struct task_struct *)bpf_get_current_task();
#endif
}

/* Mount namespace of bw_current() (0 once nsproxy is released, at exit). */
static __always_inline __u32 bw_current_mntns(struct task_struct *cur)
{
	struct nsproxy *nsp = NULL;
	struct mnt_namespace *mnt_ns = NULL;
	unsigned int inum = 0;

	BW_LOAD(nsp, cur, nsproxy);
	if (!nsp)
		return 0;
	BW_LOAD(mnt_ns, nsp, mnt_ns);
#ifndef BW_TASK_BTF
	if (!mnt_ns)
		return 0;
#endif
	BW_LOAD(inum, mnt_ns, ns.inum);
	return inum;
}

/* The saved user registers of `task` (the current one): bpf_task_pt_regs() where the kernel has it
 * (5.15+), else the top of its kernel stack (x86_64: THREAD_SIZE 16 KiB, no padding). BW_REG reads
 * one register either way. */
#ifdef BW_HELPER_task_pt_regs
#define bw_task_regs(task) ((struct pt_regs *)bpf_task_pt_regs(task))
#define BW_REG(dst, regs, r) ((dst) = (regs)->r)
#else
#define BW_THREAD_SIZE 16384
static __always_inline struct pt_regs *bw_task_regs(struct task_struct *task)
{
	void *stack = NULL;

	BW_READ(stack, task, stack);
	if (!stack)
		return NULL;
	return (struct pt_regs *)((char *)stack + BW_THREAD_SIZE) - 1;
}
#define BW_REG(dst, regs, r) BW_READ(dst, regs, r)
#endif

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

/* The name of `task`'s controlling tty (signal->tty->name, e.g. "pts0"); "" when it has none. */
static __always_inline void bw_task_tty(char *out, struct task_struct *task)
{
	struct signal_struct *sig = NULL;
	struct tty_struct *tty = NULL;

	out[0] = 0;
	BW_READ(sig, task, signal);
	if (!sig)
		return;
	BW_READ(tty, sig, tty);
	if (!tty)
		return;
	bpf_probe_read_kernel_str(out, BW_TTY_LEN, &tty->name);
}

#endif /* BW_TASK_H */

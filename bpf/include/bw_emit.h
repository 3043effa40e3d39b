/* Building and emitting records: visibility gate, task identity (cached per process), the process
 * record that carries the exe once per process, and the enter/exit stash of syscall records. */
#ifndef BW_EMIT_H
#define BW_EMIT_H

#include "events.h"
#include "bw_maps.h"
#include "bw_task.h"
#include "bw_path.h"
#include "bw_files.h"
#include "bw_names.h"

/* Which of `bits` are emitted for `mntns` (0: none, counted as filtered): its own entry in
 * bw_visibility, else the default entry. bw_vis_default is an array (its lookups are inlined)
 * holding the default and the union of all entries: a kind no mount namespace wants is refused
 * at once. The own entry comes from its slot in bw_vis_slots (inlined too); only a slot several
 * listed namespaces share costs a hash lookup. The monitor's own process (BW_MONITOR_TGID) is never
 * traced: its reads would feed back into the stream. `cur` is bw_current(). `count`: count a refusal
 * in BW_STAT_FILTERED (a constant: the compiler drops what is not asked for). */
static __always_inline __u32 bw_vis_check(struct task_struct *cur, __u32 mntns, __u32 bits, const int count)
{
	__u32 key = BW_VIS_ANY, *mask;

#ifdef BW_MONITOR_TGID
	int own = 0;

	BW_LOAD(own, cur, tgid);
	if (own == BW_MONITOR_TGID)
		return 0;
#endif
	mask = bw_vis_default.lookup(&key);
	if (mask && (*mask & bits)) {
		__u32 idx = mntns & (BW_VIS_SLOTS - 1);
		struct bw_vis_slot *slot = bw_vis_slots.lookup(&idx);

		mask = NULL;
		if (slot && mntns && slot->mntns == mntns)
			mask = &slot->mask;
		else if (slot && slot->mntns == BW_VIS_SHARED)
			mask = bw_visibility.lookup(&mntns);
		if (!mask) {
			key = BW_VIS_DEFAULT;
			mask = bw_vis_default.lookup(&key);
		}
		if (mask && (*mask & bits))
			return *mask & bits;
	}
	if (count)
		bw_stat(BW_STAT_FILTERED);
	return 0;
}

static __always_inline __u32 bw_vis_bits(struct task_struct *cur, __u32 mntns, __u32 bits)
{
	return bw_vis_check(cur, mntns, bits, 1);
}

/* The same for a preset's records: a namespace that does not want them is not "filtered" (the
 * kinds' counter says what visibility dropped, and every exec would count here). */
static __always_inline __u32 bw_vis_preset(struct task_struct *cur, __u32 mntns, __u32 bits)
{
	return bw_vis_check(cur, mntns, bits, 0);
}

static __always_inline int bw_visible(struct task_struct *cur, __u32 mntns, __u32 bit)
{
	return bw_vis_bits(cur, mntns, bit) != 0;
}

/* Whether the path argument `uname` starts with an entry of bw_file_paths for `mntns`. A name
 * that cannot be read counts as listed: over-emitting is allowed, hiding an event a rule could
 * match is not. A relative name whose own names are not listed gives BW_PATH_RELATIVE: the
 * directory it is resolved against decides (bw_fd_names_listed), where the caller can walk it. */
#define BW_PATH_RELATIVE 2
static __always_inline int bw_path_listed(__u32 mntns, const char *uname)
{
	__u32 zero = 0;
	struct bw_path_key *k = bw_path_scratch.lookup(&zero);
	long n;

	if (!k || !uname)
		return 1;
	n = bpf_probe_read_user_str(k->path, sizeof(k->path), uname);
	if (n <= 0)
		return 1;
	if (k->path[0] != '/')
		return bw_relative_name_listed(k->path, n) ? 1 : BW_PATH_RELATIVE;
	k->mntns = mntns;
	k->prefixlen = (sizeof(k->mntns) + n) * 8;   /* n counts the NUL: exact entries end with it */
	return bw_file_paths.lookup(k) != NULL;
}

/* For a file event of `mntns` with `bits` = its BW_VIS_FILE | BW_VIS_FILE_PATHS bits (non-zero):
 * whether the event for the path argument `uname` is emitted (non-zero; BW_PATH_RELATIVE: unless
 * its directory's names say otherwise). Called before anything is built, so a filtered open costs
 * the visibility lookups, one user read and one trie lookup. */
static __always_inline int bw_file_wanted(__u32 bits, __u32 mntns, const char *uname)
{
	int listed;

	if (bits & BW_VIS_FILE)
		return 1;
	listed = bw_path_listed(mntns, uname);
	if (listed)
		return listed;
	bw_stat(BW_STAT_FILTERED);
	return 0;
}

/* The command line of `task` (bw_current(): its argv as the kernel laid it out at exec, from
 * mm->arg_start to mm->arg_end), at most BW_ARGS_LEN bytes. Read from user memory: a page not
 * faulted in (no page faults here) leaves it empty, flagged. */
static __always_inline void bw_task_args(struct bw_proc_event *pe, struct task_struct *task)
{
	struct mm_struct *mm = NULL;
	unsigned long start = 0, end = 0;
	__u64 n;

	pe->args_len = 0;
	pe->args_flags = 0;
	pe->pad = 0;
	BW_READ(mm, task, mm);
	if (!mm)
		return;
	BW_READ(start, mm, arg_start);
	BW_READ(end, mm, arg_end);
	if (!start || end <= start)
		return;
	n = end - start;
	if (n > BW_ARGS_LEN) {
		n = BW_ARGS_LEN;
		pe->args_flags |= BW_ARGS_TRUNCATED;
	}
	asm volatile("" : "+r"(n));              /* re-check after the compiler: the verifier needs it */
	if (n == 0 || n > BW_ARGS_LEN)
		return;
	if (bpf_probe_read_user(pe->args, n, (const void *)start) == 0)
		pe->args_len = n;
	else
		pe->args_flags |= BW_ARGS_FAULT;
}

/* Send `task`'s exe (mm->exe_file) and command line as a BW_OP_PROC record; 0 when it was written. */
static __always_inline int bw_announce(struct bw_task_info *t, struct task_struct *task)
{
	__u32 zero = 0;
	struct bw_proc_event *pe = bw_proc_scratch.lookup(&zero);

	if (!pe)
		return -1;
	pe->hdr.op = BW_OP_PROC;
	pe->hdr.size = sizeof(*pe);
	pe->hdr.ktime = bpf_ktime_get_ns();
	bpf_probe_read_kernel(&pe->task, sizeof(pe->task), t);
	bw_task_exe(&pe->exe, task);
	bw_task_tty(pe->tty, task);
	bw_task_args(pe, task);
	if (bw_events.ringbuf_output(pe, sizeof(*pe), BW_RB_FLAGS)) {
		bw_stat(BW_STAT_PROC_LOST);
		return -1;
	}
	bw_stat(BW_STAT_EMITTED);
	return 0;
}

/* Fill the identity of the current task (`task` = bw_current(): ids, credentials, cgroup and comm
 * are plain loads, each helper call they replace costs more here); namespaced ids come from the
 * per-process cache (walked again only when the parent changed), and a process seen for the first
 * time is announced. */
static __always_inline void bw_task_fill(struct bw_task_info *t, struct task_struct *task, __u32 mntns)
{
	__u32 tgid = 0;
	struct bw_proc *p;
	struct bw_ids ids = {};
	int ptgid = 0;

	BW_LOAD(tgid, task, tgid);
	p = bw_procs.lookup(&tgid);
	t->pid = tgid;
#ifdef BW_TASK_BTF
	{
		const struct cred *cred = task->cred;
		const __u64 *comm = (const __u64 *)task->comm;

		ptgid = task->real_parent->tgid;
		t->tid = task->pid;
		t->uid = cred->uid.val;              /* = bpf_get_current_uid_gid(), without its call */
		t->gid = cred->gid.val;
		t->cgroup_id = task->cgroups->dfl_cgrp->kn->id;   /* = bpf_get_current_cgroup_id() */
		__builtin_memcpy(t->comm, &comm[0], 8);  /* comm is NUL-padded: = bpf_get_current_comm() */
		__builtin_memcpy(t->comm + 8, &comm[1], 8);
	}
#else
	{
		struct task_struct *parent = NULL;
		__u64 ugid = bpf_get_current_uid_gid();

		BW_READ(parent, task, real_parent);
		if (parent)
			BW_READ(ptgid, parent, tgid);
		t->tid = (__u32)bpf_get_current_pid_tgid();
		t->uid = (__u32)ugid;
		t->gid = ugid >> 32;
		t->cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(t->comm, sizeof(t->comm));
	}
#endif
	if (p && !mntns)
		mntns = p->mntns;                    /* exiting: nsproxy already released */
	t->mntns = mntns;
	if (p && p->ppid == (__u32)ptgid) {
		t->ppid = p->ppid;
		t->ns_pid = p->ns_pid;
		t->ns_ppid = p->ns_ppid;
		t->pidns = p->pidns;
		return;
	}
	bw_task_ids(task, &ids);
	t->ppid = ids.ppid;
	t->ns_pid = ids.ns_pid;
	t->ns_ppid = ids.ns_ppid;
	t->pidns = ids.pidns;
	if (p) {                                 /* reparented */
		p->ppid = ids.ppid;
		p->ns_ppid = ids.ns_ppid;
		return;
	}
	if (bw_announce(t, task))
		return;                              /* not cached: announced again next time */
	struct bw_proc fresh = {.pidns = ids.pidns, .ns_pid = ids.ns_pid, .ppid = ids.ppid,
				.ns_ppid = ids.ns_ppid, .mntns = mntns};
	bw_procs.update(&tgid, &fresh);
}

/* Reset the fields every record sets (buffers are cut by their lengths, never read stale). */
static __always_inline void bw_sys_reset(struct bw_sys_event *e, __u32 op, __s32 nr, __u32 mntns)
{
	e->hdr.op = op;
	e->hdr.ktime = bpf_ktime_get_ns();
	e->task.mntns = mntns;
	e->ret = 0;
	for (int i = 0; i < 6; i++)
		e->args[i] = 0;
	e->syscall = nr;
	e->flags = 0;
	e->name_len = 0;
	e->aux_len = 0;
	e->pad[0] = 0;                           /* armed: set by bw_sys_stash_put */
	e->name[0] = 0;
}

/* A record in this CPU's scratch, reset for `op`, `nr` and `mntns` (visibility already decided). */
static __always_inline struct bw_sys_event *bw_sys_scratch_begin(__u32 op, __s32 nr, __u32 mntns)
{
	__u32 zero = 0;
	struct bw_sys_event *e = bw_sys_scratch.lookup(&zero);

	if (e)
		bw_sys_reset(e, op, nr, mntns);
	return e;
}

/* A record in this CPU's scratch, or NULL when `vis` is not emitted for the caller's mntns.
 * `task` is bw_current(), here and in every function below that takes a task. */
static __always_inline struct bw_sys_event *bw_sys_begin(__u32 op, __u32 vis, __s32 nr,
							 struct task_struct *task)
{
	__u32 mntns = bw_current_mntns(task);

	if (!bw_visible(task, mntns, vis))
		return NULL;
	return bw_sys_scratch_begin(op, nr, mntns);
}

/* For a syscall's enter (visibility already decided): the calling thread's own slot in
 * bw_sys_stash, built in place (no copy of the record into the map per call; the slot stays and is
 * re-armed by the thread's next call). */
static __always_inline struct bw_sys_event *bw_sys_stash_begin(__u32 op, __s32 nr, __u32 mntns)
{
	__u32 zero = 0, tid = (__u32)bpf_get_current_pid_tgid();
	struct bw_sys_event *e = bw_sys_stash.lookup(&tid);

	if (!e) {
		struct bw_sys_event *init = bw_sys_scratch.lookup(&zero);

		if (!init)
			return NULL;
		init->pad[0] = 0;
		if (bw_sys_stash.update(&tid, init)) {
			bw_stat(BW_STAT_STASH_FULL);
			return NULL;
		}
		e = bw_sys_stash.lookup(&tid);
		if (!e)
			return NULL;
	}
	bw_sys_reset(e, op, nr, mntns);
	return e;
}

/* bw_sys_stash_begin, or NULL when `vis` is not emitted for the caller's mntns. */
static __always_inline struct bw_sys_event *bw_sys_enter_begin(__u32 op, __u32 vis, __s32 nr,
							       struct task_struct *task)
{
	__u32 mntns = bw_current_mntns(task);

	if (!bw_visible(task, mntns, vis))
		return NULL;
	return bw_sys_stash_begin(op, nr, mntns);
}

/* Write `e` to the ring buffer: cut after the name unless a dir path follows. */
/* SIGNAL_GROUP_EXIT (include/linux/sched/signal.h): a fatal signal is being delivered to the group */
#define BW_SIGNAL_GROUP_EXIT 0x4

/* Whether the current process is already being killed (a SIGKILL sent, e.g. by the signal enforcer at
 * this syscall's entry): the syscall completes, but the process never returns to user space. */
static __always_inline int bw_dying(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct signal_struct *sig = NULL;
	unsigned int flags = 0;

	BW_READ(sig, task, signal);
	if (!sig)
		return 0;
	BW_READ(flags, sig, flags);
	return (flags & BW_SIGNAL_GROUP_EXIT) != 0;
}

static __always_inline void bw_sys_emit(struct bw_sys_event *e)
{
	__u64 size = sizeof(*e);
	__u32 op = e->hdr.op;

	if (bw_dying())
		e->flags |= BW_SYS_F_DYING;

	if (!(e->flags & (BW_SYS_F_DIR_CWD | BW_SYS_F_DIR_FD))) {
		size = __builtin_offsetof(struct bw_sys_event, name) + e->name_len;
		if (size > sizeof(*e))
			size = sizeof(*e);
	}
	asm volatile("" : "+r"(size));           /* the verifier must see the check on this register */
	if (size > sizeof(*e))
		return;
	e->hdr.size = size;
	if (bw_events.ringbuf_output(e, size, BW_RB_FLAGS)) {
		bw_stat(BW_STAT_LOST);
		bw_stat(BW_STAT_LOST_OP + (op & 15));
		return;
	}
	bw_stat(BW_STAT_EMITTED);
}

/* Fill in who, then emit (records that need no exit: capability, fork, exit). */
static __always_inline void bw_sys_finish(struct bw_sys_event *e, struct task_struct *task)
{
	bw_task_fill(&e->task, task, e->task.mntns);
	bw_sys_emit(e);
}

/* The record (from bw_sys_enter_begin) is complete: emit it when the syscall returns. */
static __always_inline void bw_sys_stash_put(struct bw_sys_event *e)
{
	e->pad[0] = 1;
}

static __always_inline void bw_sys_name_retry(struct bw_sys_event *e, struct task_struct *task);

static __always_inline int bw_want(__u32 bit)
{
	__u32 zero = 0, *cfg = bw_config.lookup(&zero);

	return cfg && (*cfg & bit);
}

/* Owner of the file an open returned as `fd` (for ownerOnly rules). */
static __always_inline void bw_sys_owner(struct bw_sys_event *e, struct task_struct *task, long fd)
{
	struct file *f = bw_fd_file(task, fd);
	struct inode *inode = NULL;
	__u32 uid = 0;

	if (!f)
		return;
	BW_READ(inode, f, f_inode);
	if (!inode || BW_READ(uid, inode, i_uid.val))
		return;
	e->args[4] = uid;
	e->flags |= BW_SYS_F_OWNER;
}

static __always_inline int bw_sys_exit_common(long ret, __s32 nr)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct bw_sys_event *e = bw_sys_stash.lookup(&tid);

	if (!e || !e->pad[0])
		return 0;                            /* not armed: the kind was not visible */
	e->pad[0] = 0;
	if (e->syscall == nr) {
		struct task_struct *task = bw_current();

		e->ret = ret;
		bw_sys_name_retry(e, task);
		bw_sys_finish(e, task);
	} else {
		bw_stat(BW_STAT_STALE_STASH);
	}
	return 0;
}

/* The path argument, from user memory. */
static __always_inline void bw_sys_name(struct bw_sys_event *e, const char *uptr)
{
	long n = bpf_probe_read_user_str(e->name, sizeof(e->name), uptr);

	if (n <= 0) {
		e->flags |= BW_SYS_F_NAME_FAULT;
		e->name_len = 0;
		return;
	}
	if (n >= (long)sizeof(e->name))
		e->flags |= BW_SYS_F_NAME_TRUNC;
	e->name_len = n;
}

/* For a name that is not absolute: the directory it is relative to (cwd, or the dirfd's path). */
static __always_inline void bw_sys_dir(struct bw_sys_event *e, struct task_struct *task, long dirfd)
{
	const struct path *where = NULL;

	if ((e->flags & BW_SYS_F_NAME_FAULT) || (e->name_len > 1 && e->name[0] == '/'))
		return;
	if (dirfd == BW_AT_FDCWD) {
		struct fs_struct *fs = NULL;

		BW_LOAD(fs, task, fs);               /* task is bw_current(): a direct load */

		if (!fs)
			return;
		where = &fs->pwd;
		e->flags |= BW_SYS_F_DIR_CWD;
	} else {
		struct file *f = bw_fd_file(task, dirfd);

		if (!f)
			return;
		where = &f->f_path;
		e->flags |= BW_SYS_F_DIR_FD;
	}
	bw_path_of(&e->dir, where);
}

/* The path argument and, for a relative one, its directory. A name in a page not faulted in yet
 * cannot be read here (no page faults in tracepoints): it is read again at exit, after the kernel
 * itself copied it (bw_sys_name_retry). */
static __always_inline void bw_sys_name_at(struct bw_sys_event *e, struct task_struct *task,
					   const char *uptr, long dirfd)
{
	bw_sys_name(e, uptr);
	if ((e->flags & BW_SYS_F_NAME_FAULT) && uptr && !e->aux_len) {
		__builtin_memcpy(e->aux, &uptr, 8);
		__builtin_memcpy(e->aux + 8, &dirfd, 8);
		e->flags |= BW_SYS_F_RETRY;
		return;
	}
	bw_sys_dir(e, task, dirfd);
}

static __always_inline void bw_sys_name_retry(struct bw_sys_event *e, struct task_struct *task)
{
	const char *uptr = NULL;
	long dirfd = 0;

	if (!(e->flags & BW_SYS_F_RETRY))
		return;
	__builtin_memcpy(&uptr, e->aux, 8);
	__builtin_memcpy(&dirfd, e->aux + 8, 8);
	e->flags &= ~(BW_SYS_F_RETRY | BW_SYS_F_NAME_FAULT);
	bw_sys_name(e, uptr);
	bw_sys_dir(e, task, dirfd);
}

/* `len` bytes of user memory (a sockaddr, a string) into aux. */
static __always_inline void bw_sys_aux(struct bw_sys_event *e, const void *uptr, long len)
{
	__u64 n = len;

	if (!uptr || len <= 0)
		return;
	if (n > sizeof(e->aux))
		n = sizeof(e->aux);
	asm volatile("" : "+r"(n));              /* re-check after the compiler: the verifier needs it */
	if (n == 0 || n > sizeof(e->aux))
		return;
	if (bpf_probe_read_user(e->aux, n, uptr) == 0)
		e->aux_len = n;
}

#endif /* BW_EMIT_H */

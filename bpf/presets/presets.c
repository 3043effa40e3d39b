/* Preset records (BW_OP_PRESET, struct bw_sys_event): the attacks KubeArmor's policy presets name, seen
 * only in mount namespaces whose rules ask for that preset (its BW_VIS_PRESET_* bit), and only when the
 * syscall succeeded (a refusal is the enforcer's report). Each is emitted at the syscall's exit, so a
 * process the signal enforcer killed at the hook is marked dying (its report is the alert).
 *  - filelessExec, exec: decided at sched_process_exec (the new image is in place), stashed in the
 *    thread's bw_sys_stash slot, emitted by the exec's exit (process/exec.c);
 *  - protectEnv: an open's exit, by the file it opened (bwmon_env_x);
 *  - anonMapExec: mmap of anonymous memory with PROT_EXEC, and (maple-tree kernels, 6.1+) mprotect
 *    adding PROT_EXEC to an anonymous mapping: stashed at the enter, emitted at the exit. */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"
#include "bw_presets.h"

/* The exec's new program at sched_process_exec: a fileless one, or one a process that entered the
 * pid namespace from outside runs (its parent is not in that namespace, and it is not the namespace's
 * init: docker/kubectl exec, nsenter; a fileless exec is reported as that only). */
static __always_inline void bw_preset_exec(struct bw_tp_sched_process_exec *ctx)
{
	struct task_struct *task = bw_current();
	__u32 mntns = bw_current_mntns(task), bits, fileless = 0;
	struct mm_struct *mm = NULL;
	struct file *exe = NULL;
	struct dentry *dentry = NULL;
	const unsigned char *dname = NULL;
	struct task_struct *parent = NULL;
	struct bw_sys_event *e;
	struct bw_ids ids = {};
	long n;

	bits = bw_vis_preset(task, mntns, BW_VIS_PRESET_FILELESS | BW_VIS_PRESET_ENTERED);
	if (!bits)
		return;
	BW_READ(mm, task, mm);
	if (!mm)
		return;
	BW_READ(exe, mm, exe_file);
	if (!exe)
		return;
	if (bits & BW_VIS_PRESET_FILELESS)
		fileless = bw_fileless(exe);
	if (!fileless) {
		if (!(bits & BW_VIS_PRESET_ENTERED))
			return;
		bw_task_ids(task, &ids);
		if (ids.ns_ppid || ids.ns_pid <= 1)
			return;                      /* its parent is in its namespace, or it is init */
	}
	e = bw_sys_stash_begin(BW_OP_PRESET, -1, mntns);
	if (!e)
		return;
	e->args[0] = fileless ? BW_PRESET_FILELESS_EXEC : BW_PRESET_EXEC;
	e->args[1] = fileless & BW_PRE_MEMFD;
	bw_path_of(&e->dir, &exe->f_path);
	e->flags |= BW_SYS_F_DIR_FD;
	if (fileless) {
		BW_READ(dentry, exe, f_path.dentry);
		if (dentry)
			BW_READ(dname, dentry, d_name.name);
		n = dname ? bpf_probe_read_kernel_str(e->name, BW_NAME_MAX, dname) : 0;
		e->name_len = n > 0 ? n : 0;
		n = bpf_probe_read_kernel_str(e->aux, sizeof(e->aux), (char *)ctx + (ctx->filename_loc & 0xFFFF));
	} else {
		e->args[2] = ids.ppid;
		n = bpf_probe_read_kernel_str(e->name, sizeof(e->name), (char *)ctx + (ctx->filename_loc & 0xFFFF));
		e->name_len = n > 0 ? n : 0;
		BW_READ(parent, task, real_parent);
		n = parent ? bpf_probe_read_kernel_str(e->aux, BW_COMM_LEN, &parent->comm) : 0;
	}
	if (n > 0) {
		e->aux_len = n;
		e->flags |= BW_SYS_F_AUX_STR;
	}
	bw_sys_stash_put(e);
}

/* The exec returned: emit the stashed preset record of this thread, if any (syscall = its number). */
static __always_inline void bw_preset_exec_exit(long ret, __s32 nr)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct bw_sys_event *e = bw_sys_stash.lookup(&tid);

	if (!e || !e->pad[0] || e->hdr.op != BW_OP_PRESET)
		return;
	e->pad[0] = 0;
	e->ret = ret;
	e->syscall = nr;
	bw_sys_finish(e, bw_current());
}

/* open, openat, openat2 exit (beside bwmon_open_x): another process's environment opened. */
int bwmon_env_x(struct bw_tp_sys_exit *ctx)
{
	long fd = ctx->ret;
	__s32 nr = ctx->syscall_nr;
	struct task_struct *task;
	struct bw_sys_event *e;
	struct file *f;
	__u32 mntns, target, own = bpf_get_current_pid_tgid() >> 32;

	if (fd < 0)
		return 0;
	task = bw_current();
	mntns = bw_current_mntns(task);
	if (!bw_vis_preset(task, mntns, BW_VIS_PRESET_ENV))
		return 0;
	f = bw_fd_file(task, fd);
	target = bw_environ_tgid(f);
	if (!target || target == own)
		return 0;
	e = bw_sys_scratch_begin(BW_OP_PRESET, nr, mntns);
	if (!e)
		return 0;
	e->args[0] = BW_PRESET_PROTECT_ENV;
	e->args[2] = target;
	e->args[3] = fd;
	e->ret = fd;
	bw_path_of(&e->dir, &f->f_path);
	e->flags |= BW_SYS_F_DIR_FD;
	bw_sys_finish(e, task);
	return 0;
}

/* The stash for an anonymous mapping made executable, when its namespace wants anonMapExec. */
static __always_inline void bw_anon_stash(__s32 nr, __u64 pre, __u64 prot, __u64 flags, __u64 addr, __u64 len)
{
	struct task_struct *task = bw_current();
	__u32 mntns = bw_current_mntns(task);
	struct bw_sys_event *e;

	if (!bw_vis_preset(task, mntns, BW_VIS_PRESET_ANON_EXEC))
		return;
#ifdef BW_MAPLE_MM
	if ((pre & BW_PRE_MPROTECT) && !bw_anon_vma_gains_exec(task, addr))
		return;
#else
	if (pre & BW_PRE_MPROTECT)
		return;                              /* no way to find the mapping here */
#endif
	e = bw_sys_stash_begin(BW_OP_PRESET, nr, mntns);
	if (!e)
		return;
	e->args[0] = BW_PRESET_ANON_MAP_EXEC;
	e->args[1] = pre;
	e->args[2] = prot;
	e->args[3] = flags;
	e->args[4] = addr;
	e->args[5] = len;
	bw_sys_stash_put(e);
}

int bwmon_mmap_e(struct bw_tp_sys_enter *ctx)     /* (addr, len, prot, flags, fd, off) */
{
	__u64 prot = ctx->args[2], flags = ctx->args[3];

	if ((prot & BW_PROT_EXEC) && (flags & BW_MAP_ANONYMOUS))
		bw_anon_stash(ctx->syscall_nr, 0, prot, flags, ctx->args[0], ctx->args[1]);
	return 0;
}

int bwmon_mprot_e(struct bw_tp_sys_enter *ctx)    /* mprotect, pkey_mprotect: (start, len, prot, ...) */
{
	__u64 prot = ctx->args[2];

	if (prot & BW_PROT_EXEC)
		bw_anon_stash(ctx->syscall_nr, BW_PRE_MPROTECT, prot, 0, ctx->args[0], ctx->args[1]);
	return 0;
}

/* mmap, mprotect, pkey_mprotect exit: emit a stashed preset record if the call succeeded. */
int bwmon_pre_x(struct bw_tp_sys_exit *ctx)
{
	long ret = ctx->ret;
	__s32 nr = ctx->syscall_nr;
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), any = BW_VIS_ANY, *mask = bw_vis_default.lookup(&any);
	struct bw_sys_event *e;

	if (!mask || !(*mask & BW_VIS_PRESET_ANON_EXEC))
		return 0;                            /* no namespace wants these: no stash lookup */
	e = bw_sys_stash.lookup(&tid);
	if (!e || !e->pad[0] || e->hdr.op != BW_OP_PRESET)
		return 0;
	e->pad[0] = 0;
	if (e->syscall != nr || (ret < 0 && ret >= -BW_ERRNO_MAX))
		return 0;                            /* another call's, or refused: nothing was mapped */
	e->ret = ret;
	bw_sys_finish(e, bw_current());
	return 0;
}

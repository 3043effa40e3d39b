/* eBPF signal enforcer: tracepoints + bpf_send_signal(SIGKILL), only for tasks in selected mount
 * namespaces (bw_enf_ns). The kill happens at the hook: for socket() the syscall completes (the
 * socket exists) but the process dies before it returns to user space and can use it; for a
 * capability the checked operation may complete before the process dies. Each kill is reported.
 * Presets: a fileless program dies at sched_process_exec, before its first instruction; an anonymous
 * mapping made executable (mmap; mprotect where the maple tree finds the mapping) at the syscall's
 * entry: the mapping is made, the process never returns to use it. */
#include "bw_enforce.h"

#define BW_SIGKILL 9
#define BW_EACCES 13
#define BW_AF_INET 2
#define BW_AF_INET6 10
#define BW_CONF_INET_REFUSED 1              /* bw_enf_conf[0]: bwenf_sock_create is attached */

BPF_ARRAY(bw_enf_conf, __u32, 1);

struct bw_enf_tp_socket {                   /* syscalls:sys_enter_socket */
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__u64 family, type, protocol;
};

struct bw_enf_tp_cap {                      /* capability:cap_capable */
	__u64 common;
	__u64 cred, target_ns, capable_ns;
	__s32 cap;
	__s32 ret;
};

struct bw_enf_tp_exec {                     /* sched:sched_process_exec */
	__u64 common;
	__u32 filename_loc;
	__s32 pid;
	__s32 old_pid;
};

struct bw_enf_tp_mmap {                     /* syscalls:sys_enter_mmap */
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__u64 addr, len, prot, flags, fd, off;
};

struct bw_enf_tp_mprotect {                 /* syscalls:sys_enter_mprotect, sys_enter_pkey_mprotect */
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__u64 start, len, prot;
};

/* Whether bwenf_sock_create refuses this family's sockets (attached, and an INET family). */
static __always_inline int bw_inet_refused(__u32 family)
{
	int zero = 0;
	__u32 *conf;

	if (family != BW_AF_INET && family != BW_AF_INET6)
		return 0;
	conf = bw_enf_conf.lookup(&zero);
	return conf && (*conf & BW_CONF_INET_REFUSED);
}

int bwenf_socket(struct bw_enf_tp_socket *ctx)
{
	__u32 mntns = bw_enf_selected();
	struct bw_verdict *v;

	if (!mntns)
		return 0;
	v = bw_match_net(mntns, (__u32)ctx->family, (__u32)ctx->type, (__u32)ctx->protocol);
	if (!v || v->action != 1 || bw_inet_refused((__u32)ctx->family))
		return 0;
	bpf_send_signal(BW_SIGKILL);
	bw_enf_report(bw_current(), mntns, BW_ENF_NET, v, (__u32)ctx->family, (__u32)ctx->type & 0xF, (__u32)ctx->protocol);
	return 0;
}

#ifdef BW_HELPER_set_retval
/* cgroup/sock_create on the cgroup v2 root (5.18+: bpf_set_retval): an INET socket a rule blocks is
 * refused with EACCES before it exists; the tracepoint above then leaves INET families alone. */
int bwenf_sock_create(struct bpf_sock *sk)
{
	__u32 mntns = bw_enf_selected(), family = sk->family, type = sk->type, protocol = sk->protocol;
	struct bw_verdict *v;

	if (!mntns)
		return 1;
	v = bw_match_net(mntns, family, type, protocol);
	if (!v || v->action != 1)
		return 1;
	bpf_set_retval(-BW_EACCES);
	bw_enf_report(bw_current(), mntns, BW_ENF_NET | BW_ENF_REFUSED, v, family, type & 0xF, protocol);
	return 0;
}
#endif

int bwenf_cap(struct bw_enf_tp_cap *ctx)
{
	struct bw_verdict *v;
	__u32 mntns;

	if (ctx->ret != 0 || !bw_cap_ruled((__u32)ctx->cap))
		return 0;                           /* refused already (nothing was used), or no rule names it */
	mntns = bw_enf_selected();
	if (!mntns)
		return 0;
	v = bw_match_cap(mntns, (__u32)ctx->cap);
	if (!v || v->action != 1)
		return 0;
	bpf_send_signal(BW_SIGKILL);
	bw_enf_report(bw_current(), mntns, BW_ENF_CAP, v, (__u32)ctx->cap, 0, 0);
	return 0;
}

/* filelessExec: the new program has no link left (a memfd, a deleted file). */
int bwenf_exec(struct bw_enf_tp_exec *ctx)
{
	__u32 mntns = bw_enf_selected(), fileless;
	struct task_struct *task;
	struct mm_struct *mm = NULL;
	struct file *exe = NULL;
	struct dentry *dentry = NULL;
	const unsigned char *name = NULL;
	struct bw_verdict *v;

	if (!mntns)
		return 0;
	v = bw_match_preset(mntns, BW_PRESET_FILELESS_EXEC);
	if (!v)
		return 0;
	task = bw_current();
	BW_READ(mm, task, mm);
	if (!mm)
		return 0;
	BW_READ(exe, mm, exe_file);
	fileless = bw_fileless(exe);
	if (!fileless)
		return 0;
	bpf_send_signal(BW_SIGKILL);
	if (fileless & BW_PRE_MEMFD) {
		BW_READ(dentry, exe, f_path.dentry);
		if (dentry)
			BW_READ(name, dentry, d_name.name);
	}
	bw_preset_report(task, mntns, BW_PRESET_FILELESS_EXEC, v, (fileless & BW_PRE_MEMFD) | BW_PRE_KILLED, 0, 0,
			 (const char *)name);
	return 0;
}

/* anonMapExec: mmap of anonymous memory with PROT_EXEC. */
int bwenf_mmap(struct bw_enf_tp_mmap *ctx)
{
	__u64 prot = ctx->prot, flags = ctx->flags;
	struct bw_verdict *v;
	__u32 mntns;

	if (!(prot & BW_PROT_EXEC) || !(flags & BW_MAP_ANONYMOUS))
		return 0;
	mntns = bw_enf_selected();
	if (!mntns)
		return 0;
	v = bw_match_preset(mntns, BW_PRESET_ANON_MAP_EXEC);
	if (!v)
		return 0;
	bpf_send_signal(BW_SIGKILL);
	bw_preset_report(bw_current(), mntns, BW_PRESET_ANON_MAP_EXEC, v, BW_PRE_KILLED, (__u32)prot, (__u32)flags, 0);
	return 0;
}

/* anonMapExec: mprotect adding PROT_EXEC to an anonymous mapping (only where the maple tree finds it). */
int bwenf_mprot(struct bw_enf_tp_mprotect *ctx)
{
	__u64 prot = ctx->prot;
	struct bw_verdict *v;
	__u32 mntns;

	if (!(prot & BW_PROT_EXEC))
		return 0;
	mntns = bw_enf_selected();
	if (!mntns)
		return 0;
	v = bw_match_preset(mntns, BW_PRESET_ANON_MAP_EXEC);
	if (!v)
		return 0;
#ifdef BW_MAPLE_MM
	if (!bw_anon_vma_gains_exec(bw_current(), ctx->start))
		return 0;
	bpf_send_signal(BW_SIGKILL);
	bw_preset_report(bw_current(), mntns, BW_PRESET_ANON_MAP_EXEC, v, BW_PRE_KILLED | BW_PRE_MPROTECT,
			 (__u32)prot, 0, 0);
#endif
	return 0;
}

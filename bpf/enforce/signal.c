/* eBPF signal enforcer: tracepoints + bpf_send_signal(SIGKILL), only for tasks in selected mount
 * namespaces (bw_enf_ns). The kill happens at the hook: for socket() the syscall completes (the
 * socket exists) but the process dies before it returns to user space and can use it; for a
 * capability the checked operation may complete before the process dies. Each kill is reported.
 * Presets: a fileless program dies at sched_process_exec, before its first instruction; an anonymous
 * mapping made executable (mmap; mprotect where the maple tree finds the mapping) at the syscall's
 * entry: the mapping is made, the process never returns to use it.
 * fromSource: in a namespace whose flags ask for it, the current task's executable path (a dentry walk,
 * bw_lsm_path.h: bpf_d_path is not allowed in these programs) is looked up in bw_enf_src, an LPM trie
 * keyed (mntns, path with its NUL), for its source class; any other program is class 0. Every class has
 * its own complete keys (services/enforcer/signal/rules.py), so a lookup never falls back to another. */
#include "bw_enforce.h"
#include "bw_lsm_path.h"

#define BW_SIGKILL 9
#define BW_EACCES 13
#define BW_AF_INET 2
#define BW_AF_INET6 10
#define BW_CONF_INET_REFUSED 1              /* bw_enf_conf[0]: bwenf_sock_create is attached */

#define BW_NS_NET_SOURCES 2                /* bw_enf_ns flags: Network verdicts differ by source */
#define BW_NS_CAP_SOURCES 4                /* ... Capabilities verdicts do */

struct bw_enf_net_key {
	__u32 mntns;
	__u32 family;                            /* AF_* or BW_ANY */
	__u32 type;                              /* SOCK_* without SOCK_NONBLOCK/SOCK_CLOEXEC */
	__u32 protocol;                          /* IPPROTO_* or BW_ANY */
	__u32 src;                               /* source class: 0 unless a rule names the executable */
};

struct bw_cap_key {
	__u32 mntns;
	__u32 cap;                               /* CAP_* number */
	__u32 src;
};

struct bw_src_key {
	__u32 prefixlen;                         /* bits: 32 + 8 * bytes of the path with its NUL */
	__u32 mntns;
	char path[BW_LSM_PATH];
};

struct bw_src_scratch {
	struct bw_lsm_walk walk;
	struct bw_src_key key;
};

BPF_ARRAY(bw_enf_conf, __u32, 1);
BPF_HASH(bw_enf_net, struct bw_enf_net_key, struct bw_verdict, 16384);
BPF_HASH(bw_enf_cap, struct bw_cap_key, struct bw_verdict, 16384);
BPF_ARRAY(bw_enf_caps_any, __u64, 1);   /* bit n: some namespace has a verdict for capability n */
BPF_LPM_TRIE(bw_enf_src, struct bw_src_key, __u32, 4096);            /* (mntns, exe path) -> source class */
BPF_PERCPU_ARRAY(bw_enf_src_scratch, struct bw_src_scratch, 1);

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

/* The current task's mount namespace when it is selected (else 0), and its flags. */
static __always_inline __u32 bw_enf_selected(__u32 *flags_out)
{
	__u32 mntns = bw_current_mntns(bw_current());
	__u32 *flags;

	if (!mntns)
		return 0;
	flags = bw_enf_ns.lookup(&mntns);
	if (!flags)
		return 0;
	*flags_out = *flags;
	return mntns;
}

/* The source class of the current task's executable when `flags` has `need`, else (and for a program no
 * rule names, or whose path cannot be read whole) 0. */
static __always_inline __u32 bw_enf_source(__u32 mntns, __u32 flags, __u32 need)
{
	struct task_struct *task = bw_current();
	struct mm_struct *mm = NULL;
	struct file *exe = NULL;
	struct bw_src_scratch *s;
	__u32 zero = 0, *cls;
	long n;

	if (!(flags & need))
		return 0;
	s = bw_enf_src_scratch.lookup(&zero);
	if (!s)
		return 0;
	BW_READ(mm, task, mm);
	if (!mm)
		return 0;
	BW_READ(exe, mm, exe_file);
	if (!exe)
		return 0;
	n = bw_lsm_walk_path(&s->walk, (const struct path *)&exe->f_path, s->key.path);
	if (n <= 1 || n > BW_LSM_PATH)
		return 0;
	s->key.prefixlen = 32 + (__u32)n * 8;
	s->key.mntns = mntns;
	cls = bw_enf_src.lookup(&s->key);
	return cls ? *cls : 0;
}

static __always_inline struct bw_verdict *bw_match_net(__u32 mntns, __u32 family, __u32 type, __u32 protocol,
						       __u32 src)
{
	struct bw_enf_net_key k = {.mntns = mntns, .family = family, .type = type & 0xF, .protocol = protocol,
				   .src = src};
	struct bw_verdict *v = bw_enf_net.lookup(&k);

	if (v)
		return v;
	k.protocol = BW_ANY;
	if ((v = bw_enf_net.lookup(&k)))
		return v;
	k.family = BW_ANY;
	k.protocol = protocol;
	if ((v = bw_enf_net.lookup(&k)))
		return v;
	k.protocol = BW_ANY;
	return bw_enf_net.lookup(&k);
}

/* Whether any namespace has a verdict for `cap`: most capability checks of a node are of
 * capabilities no rule names, and end here before any namespace lookup. User space sets a bit
 * before the verdicts that need it and clears it after they are gone. */
static __always_inline int bw_cap_ruled(__u32 cap)
{
	__u32 zero = 0;
	__u64 *any = bw_enf_caps_any.lookup(&zero);

	return cap >= 64 || (any && ((*any >> cap) & 1));
}

static __always_inline struct bw_verdict *bw_match_cap(__u32 mntns, __u32 cap, __u32 src)
{
	struct bw_cap_key k = {.mntns = mntns, .cap = cap, .src = src};

	return bw_enf_cap.lookup(&k);
}

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
	__u32 flags = 0, mntns = bw_enf_selected(&flags), src;
	struct bw_verdict *v;

	if (!mntns || bw_inet_refused((__u32)ctx->family))
		return 0;
	src = bw_enf_source(mntns, flags, BW_NS_NET_SOURCES);
	v = bw_match_net(mntns, (__u32)ctx->family, (__u32)ctx->type, (__u32)ctx->protocol, src);
	if (!v || v->action != 1)
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
	__u32 flags = 0, mntns = bw_enf_selected(&flags), family = sk->family, type = sk->type;
	__u32 protocol = sk->protocol, src;
	struct bw_verdict *v;

	if (!mntns)
		return 1;
	src = bw_enf_source(mntns, flags, BW_NS_NET_SOURCES);
	v = bw_match_net(mntns, family, type, protocol, src);
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
	__u32 mntns, flags = 0;

	if (ctx->ret != 0 || !bw_cap_ruled((__u32)ctx->cap))
		return 0;                           /* refused already (nothing was used), or no rule names it */
	mntns = bw_enf_selected(&flags);
	if (!mntns)
		return 0;
	v = bw_match_cap(mntns, (__u32)ctx->cap, bw_enf_source(mntns, flags, BW_NS_CAP_SOURCES));
	if (!v || v->action != 1)
		return 0;
	bpf_send_signal(BW_SIGKILL);
	bw_enf_report(bw_current(), mntns, BW_ENF_CAP, v, (__u32)ctx->cap, 0, 0);
	return 0;
}

/* filelessExec: the new program has no link left (a memfd, a deleted file). */
int bwenf_exec(struct bw_enf_tp_exec *ctx)
{
	__u32 flags = 0, mntns = bw_enf_selected(&flags), fileless;
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
	__u32 mntns, ns_flags = 0;

	if (!(prot & BW_PROT_EXEC) || !(flags & BW_MAP_ANONYMOUS))
		return 0;
	mntns = bw_enf_selected(&ns_flags);
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
	__u32 mntns, ns_flags = 0;

	if (!(prot & BW_PROT_EXEC))
		return 0;
	mntns = bw_enf_selected(&ns_flags);
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

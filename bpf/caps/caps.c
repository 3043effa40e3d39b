/* Capability checks: which capability, and whether it was granted. A namespace whose rules name their
 * capabilities (BW_VIS_CAPS_NAMED) emits only those checks.
 * A check is recorded when security_capable() returns (fexit where the kernel has BPF trampolines,
 * BW_CAP_FEXIT; else a kprobe and its return, BW_CAP_KPROBE): by then every LSM has spoken (BPF-LSM or
 * AppArmor may refuse what commoncap granted) and a kill sent at the capability:cap_capable tracepoint
 * by the signal enforcer has marked the process dying, so the record says what happened whichever
 * program the tracepoint ran first. That tracepoint itself (bwmon_capable) is the last resort. */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"

static __always_inline int bw_cap_named(int cap)
{
	__u32 zero = 0;
	__u64 *named = bw_caps_named.lookup(&zero);

	return named && cap >= 0 && cap < 64 && ((*named >> cap) & 1);
}

/* Whether the current task's namespace wants a check of `cap` (counted as filtered when not). */
static __always_inline int bw_cap_wanted(struct task_struct *task, __u32 mntns, int cap)
{
	__u32 bits = bw_vis_bits(task, mntns, BW_VIS_CAPABILITIES | BW_VIS_CAPS_NAMED);

	if (!bits)
		return 0;
	if (!(bits & BW_VIS_CAPABILITIES) && !bw_cap_named(cap)) {
		bw_stat(BW_STAT_FILTERED);
		return 0;
	}
	return 1;
}

static __always_inline int bw_cap_emit(struct task_struct *task, __u32 mntns, int cap, int ret)
{
	struct bw_sys_event *e = bw_sys_scratch_begin(BW_OP_CAP, -1, mntns);

	if (!e)
		return 0;
	e->args[0] = cap;
	e->ret = ret;
	bw_sys_finish(e, task);
	return 0;
}

int bwmon_capable(struct bw_tp_cap_capable *ctx)
{
	struct task_struct *task = bw_current();
	__u32 mntns = bw_current_mntns(task);

	if (!bw_cap_wanted(task, mntns, ctx->cap))
		return 0;
	return bw_cap_emit(task, mntns, ctx->cap, ctx->ret);
}

#ifdef BW_CAP_FEXIT
KRETFUNC_PROBE(security_capable, const struct cred *cred, struct user_namespace *ns, int cap, unsigned int opts,
	       int ret)
{
	struct task_struct *task = bw_current();
	__u32 mntns = bw_current_mntns(task);

	if (!bw_cap_wanted(task, mntns, cap))
		return 0;
	return bw_cap_emit(task, mntns, cap, ret);
}
#endif

#ifdef BW_CAP_KPROBE
BPF_TABLE("lru_hash", __u32, __s32, bw_cap_args, 16384);   /* tid -> capability being checked */

/* security_capable(cred, ns, cap, opts): the checks a namespace wants wait for their result. */
int bwmon_cap_k(struct pt_regs *ctx)
{
	struct task_struct *task = bw_current();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__s32 cap = (__s32)PT_REGS_PARM3(ctx);

	if (bw_cap_wanted(task, bw_current_mntns(task), cap))
		bw_cap_args.update(&tid, &cap);
	return 0;
}

int bwmon_cap_kr(struct pt_regs *ctx)
{
	struct task_struct *task;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__s32 *pending = bw_cap_args.lookup(&tid);
	__s32 cap;

	if (!pending)
		return 0;
	cap = *pending;
	bw_cap_args.delete(&tid);
	task = bw_current();
	return bw_cap_emit(task, bw_current_mntns(task), cap, (__s32)PT_REGS_RC(ctx));
}
#endif

/* eBPF signal enforcer: tracepoints + bpf_send_signal(SIGKILL), only for tasks in selected mount
 * namespaces (bw_enf_ns). The kill happens at the hook: for socket() the syscall completes (the
 * socket exists) but the process dies before it returns to user space and can use it; for a
 * capability the checked operation may complete before the process dies. Each kill is reported. */
#include "bw_enforce.h"

#define BW_SIGKILL 9

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

int bwenf_socket(struct bw_enf_tp_socket *ctx)
{
	__u32 mntns = bw_enf_selected();
	struct bw_verdict *v;

	if (!mntns)
		return 0;
	v = bw_match_net(mntns, (__u32)ctx->family, (__u32)ctx->type, (__u32)ctx->protocol);
	if (!v || v->action != 1)
		return 0;
	bpf_send_signal(BW_SIGKILL);
	bw_enf_report(bw_current(), mntns, BW_ENF_NET, v, (__u32)ctx->family, (__u32)ctx->type & 0xF, (__u32)ctx->protocol);
	return 0;
}

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

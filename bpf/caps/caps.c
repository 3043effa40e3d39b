/* Capability checks (capability:cap_capable): which capability, and whether it was granted. A
 * namespace whose rules name their capabilities (BW_VIS_CAPS_NAMED) emits only those checks. */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"

static __always_inline int bw_cap_named(int cap)
{
	__u32 zero = 0;
	__u64 *named = bw_caps_named.lookup(&zero);

	return named && cap >= 0 && cap < 64 && ((*named >> cap) & 1);
}

int bwmon_capable(struct bw_tp_cap_capable *ctx)
{
	struct task_struct *task = bw_current();
	__u32 mntns = bw_current_mntns(task);
	__u32 bits = bw_vis_bits(task, mntns, BW_VIS_CAPABILITIES | BW_VIS_CAPS_NAMED);
	struct bw_sys_event *e;

	if (!bits)
		return 0;
	if (!(bits & BW_VIS_CAPABILITIES) && !bw_cap_named(ctx->cap)) {
		bw_stat(BW_STAT_FILTERED);
		return 0;
	}
	e = bw_sys_scratch_begin(BW_OP_CAP, -1, mntns);
	if (!e)
		return 0;
	e->args[0] = ctx->cap;
	e->ret = ctx->ret;
	bw_sys_finish(e, task);
	return 0;
}

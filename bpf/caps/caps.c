/* Capability checks (capability:cap_capable): which capability, and whether it was granted. */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"

int bwmon_capable(struct bw_tp_cap_capable *ctx)
{
	struct task_struct *task = bw_current();
	struct bw_sys_event *e = bw_sys_begin(BW_OP_CAP, BW_VIS_CAPABILITIES, -1, task);

	if (!e)
		return 0;
	e->args[0] = ctx->cap;
	e->ret = ctx->ret;
	bw_sys_finish(e, task);
	return 0;
}

/* Rule matching shared by every Bulwark enforcement program: the signal programs that run on
 * tracepoints (signal.c) and the BPF-LSM programs (lsm.c) use these maps and functions, so the
 * LSM side (which cannot load on the development VM) only adds its thin hook wrappers.
 *
 * Maps are filled by user space (services/enforcer/signal/rules.py, services/enforcer/bpflsm/rules.py) from
 * the node's RuleSet, keyed by mount namespace: a task whose mntns is not in bw_enf_ns is never looked at
 * further. The signal programs' own socket and capability tables are in signal.c. The presets a
 * namespace Blocks (services/enforcer/presets.py) are verdicts in bw_enf_preset, the attacks they
 * name are found by bw_presets.h.
 */
#ifndef BW_ENFORCE_H
#define BW_ENFORCE_H

#include "events.h"
#include "bw_task.h"
#include "bw_path.h"
#include "bw_presets.h"

#define BW_ANY 0xFFFFFFFFu                   /* wildcard family / protocol in a key */

struct bw_net_key {
	__u32 mntns;
	__u32 family;                            /* AF_* or BW_ANY */
	__u32 type;                              /* SOCK_* without SOCK_NONBLOCK/SOCK_CLOEXEC */
	__u32 protocol;                          /* IPPROTO_* or BW_ANY */
};

struct bw_verdict {
	__u32 rule_id;                           /* user space maps it back to workload, policy, match */
	__u32 action;                            /* 1 = block */
};

struct bw_preset_key {
	__u32 mntns;
	__u32 preset;                            /* enum bw_preset */
};

BPF_HASH(bw_enf_ns, __u32, __u32, 4096);                 /* selected mount namespaces -> flags */
BPF_HASH(bw_enf_preset, struct bw_preset_key, struct bw_verdict, 4096);   /* presets that Block */
BPF_PERCPU_ARRAY(bw_enf_stats, __u64, 4);        /* 0 matched, 1 lost reports, 2 refused, 3 audited */
BPF_RINGBUF_OUTPUT(bw_enf_events, 64);

static __always_inline void bw_enf_stat(int idx)
{
	__u64 *v = bw_enf_stats.lookup(&idx);

	if (v)
		*v += 1;
}

/* The Block verdict of `preset` for `mntns`, or NULL. */
static __always_inline struct bw_verdict *bw_match_preset(__u32 mntns, __u32 preset)
{
	struct bw_preset_key k = {.mntns = mntns, .preset = preset};
	struct bw_verdict *v = bw_enf_preset.lookup(&k);

	return v && v->action == 1 ? v : NULL;
}

/* The start of a report (struct bw_enf_event, bw_lsm_event in events.h): its header, who did it, in
 * which namespaces, and what rule it broke. */
static __always_inline void bw_enf_fill(struct bw_event_hdr *hdr, __u32 op, __u32 size, struct bw_task_info *t,
					struct bw_enf_info *enf, struct task_struct *task, __u32 mntns,
					__u32 kind, __u32 rule_id, __u32 a0, __u32 a1, __u32 a2)
{
	__u64 id = bpf_get_current_pid_tgid(), ugid = bpf_get_current_uid_gid();
	struct bw_ids ids = {};

	hdr->op = op;
	hdr->size = size;
	hdr->ktime = bpf_ktime_get_ns();
	t->pid = id >> 32;
	t->tid = (__u32)id;
	t->uid = (__u32)ugid;
	t->gid = ugid >> 32;
	t->mntns = mntns;
	bw_task_ids(task, &ids);
	t->ppid = ids.ppid;
	t->pidns = ids.pidns;
	t->ns_pid = ids.ns_pid;
	t->ns_ppid = ids.ns_ppid;
	t->pad = 0;
	t->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(t->comm, sizeof(t->comm));
	enf->kind = kind;
	enf->rule_id = rule_id;
	enf->args[0] = a0;
	enf->args[1] = a1;
	enf->args[2] = a2;
	enf->pad = 0;
}

static __always_inline void bw_enf_report(struct task_struct *task, __u32 mntns, __u32 kind,
					  struct bw_verdict *v, __u32 a0, __u32 a1, __u32 a2)
{
	struct bw_enf_event *r = bw_enf_events.ringbuf_reserve(sizeof(*r));

	bw_enf_stat(0);
	if (!r) {
		bw_enf_stat(1);
		return;
	}
	bw_enf_fill(&r->hdr, BW_OP_ENF_SIGNAL, sizeof(*r), &r->task, &r->enf, task, mntns, kind, v->rule_id,
		    a0, a1, a2);
	bw_task_exe(&r->exe, task);
	bw_enf_events.ringbuf_submit(r, 0);
}

/* A preset's attack this program blocked (killed or refused): BW_OP_ENF_PRESET, struct bw_lsm_event;
 * `res` a kernel string (a memfd's name, a file's path) or NULL. `task` is the current task. */
static __always_inline void bw_preset_report(struct task_struct *task, __u32 mntns, __u32 preset,
					     struct bw_verdict *v, __u32 pre, __u32 a1, __u32 a2, const char *res)
{
	struct bw_lsm_event *r = bw_enf_events.ringbuf_reserve(sizeof(*r));

	bw_enf_stat(0);
	if (!r) {
		bw_enf_stat(1);
		return;
	}
	bw_enf_fill(&r->hdr, BW_OP_ENF_PRESET, sizeof(*r), &r->task, &r->enf, task, mntns, preset, v->rule_id,
		    pre, a1, a2);
	r->res[0] = 0;
	if (res)
		bpf_probe_read_kernel_str(r->res, sizeof(r->res), res);
	bw_task_exe(&r->exe, task);
	bw_enf_events.ringbuf_submit(r, 0);
}

#endif /* BW_ENFORCE_H */

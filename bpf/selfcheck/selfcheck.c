/* Start-up self-check, run once in the monitor's own process (BW_SELF_TGID, passed with -D):
 *  - the offset of every kernel member in bw_fields.h, both as offsetof() and as a member access,
 *    for user space to compare with BTF;
 *  - every record of events.h, as members of the anchor map's value: this program's BTF (which bcc
 *    loads with it) then holds their layout as compiled, and user space compares every member with
 *    shared/bpf/abi.py;
 *  - this process's identity as the exec programs' helpers see it (mntns, also through the BTF
 *    task pointer the other programs use; pidns, exe, cwd). */
#include "events.h"
#include "bw_task.h"
#include "bw_path.h"
#include "bw_fields.h"

#define BW_BASE 4096UL

struct bw_self_report {
	__u32 seen;
	__u32 tgid;
	__u32 mntns;
	__u32 pidns;
	__u32 ns_pid;
	__u32 mntns_btf;                        /* the same through bw_current()'s direct loads */
	struct bw_path exe;
	struct bw_path cwd;
};

/* Every struct of events.h (shared/bpf/abi.py RECORDS), for the BTF of this program to describe. */
struct bw_abi_anchor {
	struct bw_event_hdr hdr;
	struct bw_path path;
	struct bw_task_info task;
	struct bw_enf_info enf_info;
	struct bw_exec_event exec;
	struct bw_proc_event proc;
	struct bw_sys_event sys;
	struct bw_enf_event enf;
	struct bw_lsm_event lsm;
};

BPF_ARRAY(bw_self_fields, __u64, 256);       /* [2i] offsetof, [2i+1] member access */
BPF_ARRAY(bw_self_sizes, __u64, 16);
BPF_ARRAY(bw_self_report, struct bw_self_report, 1);
BPF_ARRAY(bw_abi_anchor, struct bw_abi_anchor, 1);

/* bcc rewrites map calls only outside macros: the X-macros below call these. */
static __always_inline void bw_put_field(int k, __u64 v) { bw_self_fields.update(&k, &v); }
static __always_inline void bw_put_size(int k, __u64 v) { bw_self_sizes.update(&k, &v); }

int bwmon_selfchk(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct bw_self_report *r;
	struct bw_ids ids = {};
	int key = 0, i = 0;

	if ((bpf_get_current_pid_tgid() >> 32) != BW_SELF_TGID)
		return 0;

#define BW_X_FIELD(s, m) { \
	bw_put_field(2 * i, __builtin_offsetof(struct s, m)); \
	bw_put_field(2 * i + 1, (__u64)&((struct s *)BW_BASE)->m - BW_BASE); \
	i++; }
	BW_FIELDS(BW_X_FIELD)

	i = 0;
#define BW_X_SIZE(s) { bw_put_size(i, sizeof(struct s)); i++; }
	BW_SIZES(BW_X_SIZE)

	r = bw_self_report.lookup(&key);
	if (!r)
		return 0;
	bw_task_ids(task, &ids);
	r->tgid = bpf_get_current_pid_tgid() >> 32;
	r->mntns = bw_task_mntns(task);
	r->mntns_btf = bw_current_mntns(bw_current());
	r->pidns = ids.pidns;
	r->ns_pid = ids.ns_pid;
	bw_task_exe(&r->exe, task);
	bw_task_cwd(&r->cwd, task);
	r->seen = 1;
	return 0;
}

/* BPF-LSM enforcer (where BPF-LSM loads; it does not on the development VM): the same maps and
 * matching as the signal programs (bw_enforce.h), but the hook returns -EPERM instead of killing,
 * so the operation is refused inline. Only these wrappers are untested here. */
#include "bw_enforce.h"

#define BW_EPERM 1

LSM_PROBE(socket_create, int family, int type, int protocol, int kern)
{
	__u32 mntns;
	struct bw_verdict *v;

	if (kern)
		return 0;
	mntns = bw_enf_selected();
	if (!mntns)
		return 0;
	v = bw_match_net(mntns, (__u32)family, (__u32)type, (__u32)protocol);
	if (!v || v->action != 1)
		return 0;
	bw_enf_report(bw_current(), mntns, BW_ENF_NET, v, (__u32)family, (__u32)type & 0xF, (__u32)protocol);
	return -BW_EPERM;
}

LSM_PROBE(capable, const struct cred *cred, struct user_namespace *ns, int cap, unsigned int opts)
{
	__u32 mntns;
	struct bw_verdict *v;

	if ((opts & 2) || !bw_cap_ruled((__u32)cap))  /* CAP_OPT_NOAUDIT: a probe, not a use */
		return 0;
	mntns = bw_enf_selected();
	if (!mntns)
		return 0;
	v = bw_match_cap(mntns, (__u32)cap);
	if (!v || v->action != 1)
		return 0;
	bw_enf_report(bw_current(), mntns, BW_ENF_CAP, v, (__u32)cap, 0, 0);
	return -BW_EPERM;
}

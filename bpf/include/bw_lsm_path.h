/* bpf_d_path's job in LSM hooks where the kernel does not allow that helper there (5.10 allows it only
 * in a few tracing functions: "helper call is not allowed in probe"). The enforcer compiles lsm.c with
 * BW_NO_D_PATH after such a refusal and this walk stands in for it: dentry names up to each mount's
 * root, across to the mount point in the parent mount, until the namespace's root mount (as the
 * monitor's bw_path.h), remembered leaf first, then written root first into a per-CPU buffer.
 * The answer has bpf_d_path's shape: the length with its NUL, or negative when the path cannot be
 * read whole (too deep, too long, or a walk that did not reach the root): the caller then judges the
 * file as named by no entry, exactly as when bpf_d_path fails. Unlike d_path, a deleted file's path
 * gets no " (deleted)" suffix. Both loops are unrolled: 5.10's verifier refuses a loop whose back edge
 * is the fall-through of a helper call ("back-edge from insn N to N+1"), as the compiler lays them out. */
#ifndef BW_LSM_PATH_H
#define BW_LSM_PATH_H

#include "events.h"
#include "bw_read.h"

#define BW_LSM_WALK_DEPTH 32                 /* components kept (a power of two: an index mask) */
#define BW_LSM_WALK_SPAN 256                 /* a component starts below this offset of buf */

/* Scratch for one walk: a per-CPU array value of the including program (bcc rewrites map calls only
 * in a program's main text, so the map is declared there). */
struct bw_lsm_walk {
	const unsigned char *names[BW_LSM_WALK_DEPTH];
	__u32 depth;
	__u32 off;
	char buf[2 * BW_LSM_WALK_SPAN];
};

/* The path of `path` into `out` (BW_LSM_PATH bytes): the length with its NUL, or -1. The depth and the
 * write offset live in the map value and are re-read every iteration (volatile), so the verifier's
 * states of different iterations merge instead of multiplying (see bw_path.h). */
static __always_inline long bw_lsm_walk_path(struct bw_lsm_walk *w, const struct path *path, char *out)
{
	struct vfsmount *vfsmnt = NULL;
	struct dentry *dentry = NULL;
	struct mount *mnt;
	volatile __u32 *depth, *off;
	__u32 len;
	int complete = 0;

	depth = &w->depth;
	off = &w->off;
	*depth = 0;
	*off = 0;
	bpf_probe_read_kernel(&vfsmnt, sizeof(vfsmnt), &path->mnt);
	bpf_probe_read_kernel(&dentry, sizeof(dentry), &path->dentry);
	if (!vfsmnt || !dentry)
		return -1;
	mnt = bw_container_of(vfsmnt, struct mount, mnt);
#pragma unroll
	for (int i = 0; i < BW_PATH_ITERS; i++) {
		struct dentry *mnt_root = NULL, *parent = NULL;
		const unsigned char *name = NULL;
		__u32 d;

		BW_READ(mnt_root, vfsmnt, mnt_root);
		if (dentry == mnt_root) {
			struct mount *up = NULL;

			BW_READ(up, mnt, mnt_parent);
			if (!up || up == mnt) {
				complete = 1;
				break;
			}
			BW_READ(dentry, mnt, mnt_mountpoint);
			mnt = up;
			vfsmnt = &up->mnt;
			continue;
		}
		BW_READ(parent, dentry, d_parent);
		if (!parent || parent == dentry) {
			complete = 1;
			break;
		}
		d = *depth;
		if (d >= BW_LSM_WALK_DEPTH)
			return -1;
		BW_READ(name, dentry, d_name.name);
		w->names[d & (BW_LSM_WALK_DEPTH - 1)] = name;
		*depth = d + 1;
		dentry = parent;
	}
	if (!complete)
		return -1;
	if (*depth == 0) {
		out[0] = '/';
		out[1] = 0;
		return 2;
	}
#pragma unroll
	for (int i = BW_LSM_WALK_DEPTH - 1; i >= 0; i--) {
		__u32 o;
		long n;

		if ((__u32)i >= *depth)
			continue;
		o = *off;
		if (o >= BW_LSM_WALK_SPAN - 1)
			return -1;
		asm volatile("" : "+r"(o));      /* keep the mask: the verifier needs it */
		o &= BW_LSM_WALK_SPAN - 1;
		w->buf[o] = '/';
		o += 1;
		n = bpf_probe_read_kernel_str(&w->buf[o], BW_LSM_WALK_SPAN, w->names[i & (BW_LSM_WALK_DEPTH - 1)]);
		if (n <= 0)
			return -1;
		*off = o + (__u32)n - 1;         /* on the NUL: the next '/' goes there */
	}
	len = *off + 1;
	if (len > BW_LSM_PATH)
		return -1;
	bpf_probe_read_kernel(out, BW_LSM_PATH, w->buf);
	return len;
}

#endif /* BW_LSM_PATH_H */

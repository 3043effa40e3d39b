/* Path of a struct path (mount + dentry): dentry names up to each mount's root, then across to the
 * mount point in the parent mount (struct mount, found with container_of on the vfsmount), until the
 * root mount of the namespace. Bounded by BW_PATH_ITERS; components stored leaf first. */
#ifndef BW_PATH_H
#define BW_PATH_H

#include "events.h"
#include "bw_read.h"

/* The write offset and depth live in *out and are re-read (volatile) every iteration: a value loaded
 * from a map is unknown to the verifier, so the states of different branches merge instead of
 * multiplying (with them in registers, 40 iterations exceed the verifier's 1M-instruction budget). */
static __always_inline void bw_walk_path(struct bw_path *out, struct vfsmount *vfsmnt,
					 struct dentry *dentry)
{
	struct mount *mnt = bw_container_of(vfsmnt, struct mount, mnt);
	volatile __u16 *len = &out->len, *depth = &out->depth;
	__u16 flags = BW_PATH_TRUNCATED;

	out->len = 0;
	out->depth = 0;
	out->flags = 0;
	if (!vfsmnt || !dentry)
		return;
	for (int i = 0; i < BW_PATH_ITERS; i++) {
		struct dentry *mnt_root = NULL, *parent = NULL;
		const unsigned char *name = NULL;

		BW_READ(mnt_root, vfsmnt, mnt_root);
		if (dentry == mnt_root) {
			struct mount *up = NULL;

			BW_READ(up, mnt, mnt_parent);
			if (!up || up == mnt) {
				flags = BW_PATH_COMPLETE;
				break;
			}
			BW_READ(dentry, mnt, mnt_mountpoint);
			mnt = up;
			vfsmnt = &up->mnt;
			continue;
		}
		BW_READ(parent, dentry, d_parent);
		if (!parent || parent == dentry) {
			flags = BW_PATH_COMPLETE;
			break;
		}
		__u32 off = *len;

		if (off >= BW_PATH_SPAN || *depth >= BW_PATH_DEPTH)
			break;
		asm volatile("" : "+r"(off));    /* keep the mask: the verifier needs it */
		off &= BW_PATH_SPAN - 1;
		BW_READ(name, dentry, d_name.name);
		long n = bpf_probe_read_kernel_str(&out->buf[off], BW_NAME_MAX, name);
		if (n > 0) {
			*len = off + n;
			*depth += 1;
		}
		dentry = parent;
	}
	out->flags = flags;
}

static __always_inline void bw_path_of(struct bw_path *out, const struct path *path)
{
	struct vfsmount *mnt = NULL;
	struct dentry *dentry = NULL;

	bpf_probe_read_kernel(&mnt, sizeof(mnt), &path->mnt);
	bpf_probe_read_kernel(&dentry, sizeof(dentry), &path->dentry);
	bw_walk_path(out, mnt, dentry);
}

/* The executable of `task` (mm->exe_file). */
static __always_inline void bw_task_exe(struct bw_path *out, struct task_struct *task)
{
	struct mm_struct *mm = NULL;
	struct file *exe = NULL;

	out->len = out->depth = out->flags = 0;
	BW_READ(mm, task, mm);
	if (!mm)
		return;
	BW_READ(exe, mm, exe_file);
	if (!exe)
		return;
	bw_path_of(out, &exe->f_path);
}

/* The working directory of `task` (fs->pwd). */
static __always_inline void bw_task_cwd(struct bw_path *out, struct task_struct *task)
{
	struct fs_struct *fs = NULL;

	out->len = out->depth = out->flags = 0;
	BW_READ(fs, task, fs);
	if (!fs)
		return;
	bw_path_of(out, &fs->pwd);
}

#endif /* BW_PATH_H */

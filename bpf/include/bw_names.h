/* The name prefilter of opens in namespaces that emit only the file events their rules name
 * (BW_VIS_FILE_PATHS). Reading the caller's path argument (saved registers, a user copy, a trie
 * lookup) is the dearest part of such an open. A successful open has a file, whose dentry and its
 * parents up to the caller's root are reached with plain loads: when none of their names is the
 * last name of a bw_file_paths entry (a file, a directory, or the target of one that is a symlink;
 * user space keeps bw_name_sigs), no entry can name the file and the open is dropped without the
 * user copy. Anything it cannot decide (a failed open, a long name, a descriptor past the embedded
 * table, a path deeper than it follows) is left to the path trie. A file on another mount than the
 * caller's root is followed across to its mount point, with one read per dentry from there. The loader
 * defines BW_NAMES_PREFILTER and BW_NAME_INLINE (DNAME_INLINE_LEN) from BTF when the dentry keeps
 * short names in d_shortname (6.14 and later); without them every open goes to the trie. */
#ifndef BW_NAMES_H
#define BW_NAMES_H

#include "bw_maps.h"
#include "bw_task.h"

#if defined(BW_NAMES_PREFILTER) && !defined(BW_TASK_BTF)
#undef BW_NAMES_PREFILTER                    /* its walk needs the BTF task pointer's plain loads */
#endif

#define BW_FD_EMBEDDED 64                    /* NR_OPEN_DEFAULT: files_struct.fd_array */
#define BW_NAMES_DEPTH 24                    /* deeper files are left to the trie */

/* The signature of a name: its length and first 8 bytes (none past its end), hashed to a bit of
 * bw_name_sigs. services/monitor/namesigs.py computes the same. Branch-free. */
#ifdef BW_NAMES_PREFILTER
static __always_inline __u32 bw_sig_hash(__u64 first8, __u64 len)
{
	return (__u32)(((first8 ^ len) * 0x9E3779B97F4A7C15ULL) >> (64 - BW_SIG_BITS));
}

/* The same from a word that may hold bytes past the name's end. */
static __always_inline __u32 bw_name_sig(__u64 first8, __u32 len)
{
	if (len < 8)
		first8 &= (1ULL << (len * 8)) - 1;   /* bytes past the NUL are stale */
	return bw_sig_hash(first8, len);
}

/* Whether signature `sig` is set (0 or 1). */
static __always_inline __u64 bw_sig_set(struct bw_name_sigs *sigs, __u32 sig)
{
	return (sigs->bits[(sig >> 3) & (BW_SIG_BYTES - 1)] >> (sig & 7)) & 1;
}

/* files->fd_array[fd] with a constant index per case: the verifier refuses a variable offset into
 * a BTF object, and the slot must stay a BTF pointer for the walk's plain loads. */
#define BW_FD_CASE(n) case n: return files->fd_array[n];
static __always_inline struct file *bw_embedded_fd(struct files_struct *files, long fd)
{
	switch (fd) {
	BW_FD_CASE(0) BW_FD_CASE(1) BW_FD_CASE(2) BW_FD_CASE(3) BW_FD_CASE(4) BW_FD_CASE(5) BW_FD_CASE(6) BW_FD_CASE(7)
	BW_FD_CASE(8) BW_FD_CASE(9) BW_FD_CASE(10) BW_FD_CASE(11) BW_FD_CASE(12) BW_FD_CASE(13) BW_FD_CASE(14) BW_FD_CASE(15)
	BW_FD_CASE(16) BW_FD_CASE(17) BW_FD_CASE(18) BW_FD_CASE(19) BW_FD_CASE(20) BW_FD_CASE(21) BW_FD_CASE(22) BW_FD_CASE(23)
	BW_FD_CASE(24) BW_FD_CASE(25) BW_FD_CASE(26) BW_FD_CASE(27) BW_FD_CASE(28) BW_FD_CASE(29) BW_FD_CASE(30) BW_FD_CASE(31)
	BW_FD_CASE(32) BW_FD_CASE(33) BW_FD_CASE(34) BW_FD_CASE(35) BW_FD_CASE(36) BW_FD_CASE(37) BW_FD_CASE(38) BW_FD_CASE(39)
	BW_FD_CASE(40) BW_FD_CASE(41) BW_FD_CASE(42) BW_FD_CASE(43) BW_FD_CASE(44) BW_FD_CASE(45) BW_FD_CASE(46) BW_FD_CASE(47)
	BW_FD_CASE(48) BW_FD_CASE(49) BW_FD_CASE(50) BW_FD_CASE(51) BW_FD_CASE(52) BW_FD_CASE(53) BW_FD_CASE(54) BW_FD_CASE(55)
	BW_FD_CASE(56) BW_FD_CASE(57) BW_FD_CASE(58) BW_FD_CASE(59) BW_FD_CASE(60) BW_FD_CASE(61) BW_FD_CASE(62) BW_FD_CASE(63)
	}
	return NULL;
}

/* Whether a dentry name (its d_name.hash_len and first inline word) may be listed: its signature is
 * set, or it is too long to be inline. */
static __always_inline int bw_name_listed(struct bw_name_sigs *sigs, __u64 hash_len, __u64 first8)
{
	__u32 len = hash_len >> 32, sig;

	if (len >= BW_NAME_INLINE)
		return 1;
	sig = bw_name_sig(first8, len);
	return bw_sig_set(sigs, sig);
}

/* The dentry fields read past a mount crossing, copied at once: d_parent up to d_shortname's first
 * word (in this order in every kernel with d_shortname). */
#define BW_DV_FROM __builtin_offsetof(struct dentry, d_parent)
#define BW_DV_NAME (__builtin_offsetof(struct dentry, d_name) - BW_DV_FROM)
#define BW_DV_SHORT (__builtin_offsetof(struct dentry, d_shortname) - BW_DV_FROM)
#define BW_DV_LEN (BW_DV_SHORT + 8)
#define BW_NAMES_MOUNTS 2                    /* mount crossings followed; more are left to the trie */
#define BW_NAMES_ABOVE 12                    /* dentries followed per mount past a crossing */
#define BW_NAMES_REL_MAX 64                  /* longer relative names are left to the feeder */

/* The rest of the walk from the root of mount `vfsmnt` (not the caller's root): across to its mount
 * point in the parent mount, and on. Past the crossing the pointers are plain numbers to the
 * verifier, so each dentry is copied with one read; each crossing costs one more. */
static __always_inline int bw_names_above_mount(struct bw_name_sigs *sigs, struct vfsmount *vfsmnt,
						struct dentry *root, struct vfsmount *root_mnt)
{
	struct mount *m = bw_container_of(vfsmnt, struct mount, mnt);
	unsigned long d, mnt;
	struct {
		struct mount *parent;
		struct dentry *mountpoint;
	} up;
	__u8 view[BW_DV_LEN];

	for (int i = 0; i < BW_NAMES_MOUNTS; i++) {
		if (bpf_probe_read_kernel(&up, sizeof(up), &m->mnt_parent) || !up.parent || up.parent == m)
			return 1;                /* the top of the mount tree, yet not the caller's root */
		m = up.parent;
		mnt = (unsigned long)&m->mnt;
		d = (unsigned long)up.mountpoint;
		for (int j = 0; j < BW_NAMES_ABOVE; j++) {
			unsigned long parent;

			if (!d || bpf_probe_read_kernel(view, sizeof(view), (void *)(d + BW_DV_FROM)))
				return 1;
			if (bw_name_listed(sigs, *(__u64 *)&view[BW_DV_NAME], *(__u64 *)&view[BW_DV_SHORT]))
				return 1;
			if (d == (unsigned long)root && mnt == (unsigned long)root_mnt)
				return 0;
			parent = *(unsigned long *)&view[0];
			if (parent == d)
				break;           /* the root of mount m: cross again */
			d = parent;
		}
	}
	return 1;
}

/* The armed signature bitset, or NULL (then nothing is decided by names). */
static __always_inline struct bw_name_sigs *bw_names_armed(void)
{
	__u32 zero = 0;
	struct bw_name_sigs *sigs = bw_name_sigs.lookup(&zero);

	return sigs && sigs->armed ? sigs : NULL;
}

/* The file open as `fd` in the current task `cur`, as a BTF pointer, or NULL: only the embedded
 * table is read (a grown table has its own slot array). */
static __always_inline struct file *bw_names_fd_file(struct task_struct *cur, long fd)
{
	struct files_struct *files = cur->files;
	struct fdtable *fdt;

	if (!files || fd < 0 || fd >= BW_FD_EMBEDDED)
		return NULL;
	fdt = files->fdt;
	if (!fdt || fdt->max_fds != BW_FD_EMBEDDED)
		return NULL;
	return bw_embedded_fd(files, fd);
}

/* 0 when no dentry from `d` (on `mnt`) up to the caller's root has a listed name, 1 otherwise or
 * when it cannot tell. Within the mount the dentries are read with plain loads. `cur->fs` is set. */
static __always_inline int bw_names_walk(struct bw_name_sigs *sigs, struct task_struct *cur,
					 struct dentry *d, struct vfsmount *mnt)
{
	struct dentry *root;
	struct vfsmount *root_mnt;

	root = cur->fs->root.dentry;
	root_mnt = cur->fs->root.mnt;
	for (int i = 0; i < BW_NAMES_DEPTH; i++) {
		struct dentry *up;

		if (!d)
			return 1;
		if (bw_name_listed(sigs, d->d_name.hash_len, d->d_shortname.words[0]))
			return 1;
		if (d == root && mnt == root_mnt)
			return 0;
		up = d->d_parent;
		if (up == d)                     /* the root of another mount than the caller's root */
			break;
		d = up;
	}
	if (!d || d->d_parent != d)          /* deeper than followed */
		return 1;
	return bw_names_above_mount(sigs, mnt, root, root_mnt);
}

/* 0 when no name is listed on the path of the file open as `fd` (the working directory for
 * AT_FDCWD) up to the caller's root: an open of that file, or a name in that directory, can be
 * dropped; 1 otherwise or when it cannot tell (then the trie decides). */
static __always_inline int bw_fd_names_listed(struct task_struct *cur, long fd)
{
	struct bw_name_sigs *sigs = bw_names_armed();
	struct dentry *d;
	struct vfsmount *mnt;

	if (!sigs || !cur->fs)
		return 1;
	if (fd == BW_AT_FDCWD) {
		d = cur->fs->pwd.dentry;
		mnt = cur->fs->pwd.mnt;
	} else {
		struct file *f = bw_names_fd_file(cur, fd);

		if (!f)
			return 1;
		d = f->f_path.dentry;
		mnt = f->f_path.mnt;
	}
	return bw_names_walk(sigs, cur, d, mnt);
}

/* One byte `c` of a relative name: when it ends a component ('/' or the NUL), *hit gets whether
 * that component's signature is set; otherwise the byte joins the component's first word
 * (*acc, *len). Branch-free: the verifier walks it once per byte, whatever the name holds. */
static __always_inline void bw_rel_byte(struct bw_name_sigs *sigs, __u64 c, __u64 *acc, __u64 *len,
					__u64 *hit)
{
	__u64 a = *acc, l = *len;
	__u64 sep = (((c ^ '/') - 1) | (c - 1)) >> 63;   /* 1 for '/' or NUL (c < 256) */
	__u64 bit = bw_sig_set(sigs, bw_sig_hash(a, l)); /* a holds no byte past the component */

	*hit |= bit & sep & ((0 - l) >> 63);              /* an empty component ("a//b") names nothing */
	a |= (c << ((l & 7) * 8)) & (0 - ((l - 8) >> 63)); /* the first 8 bytes only */
	*acc = a & (sep - 1);
	*len = (l + 1) & (sep - 1);
}

/* Whether a relative name (`rel`, copied with its NUL; `n` bytes, the NUL counted) may itself
 * hold a listed name: 0 when none of its components is listed, after which the directory it is
 * resolved against decides (bw_fd_names_listed): whatever it names has only the directory's
 * names and its own on its path ('..' only removes one). Names of BW_NAMES_REL_MAX bytes or more
 * count as listed. */
static __always_inline int bw_relative_name_listed(const char *rel, long n)
{
	struct bw_name_sigs *sigs = bw_names_armed();
	__u64 acc = 0, len = 0, hit = 0;

	if (!sigs || n <= 1 || n > BW_NAMES_REL_MAX)
		return 1;
#pragma unroll
	for (int i = 0; i < BW_NAMES_REL_MAX; i++) {
		if (i >= n)
			break;
		bw_rel_byte(sigs, (__u8)rel[i], &acc, &len, &hit);
	}
	return hit != 0;
}

#else
static __always_inline int bw_fd_names_listed(struct task_struct *cur, long fd)
{
	return 1;
}

static __always_inline int bw_relative_name_listed(const char *rel, long n)
{
	return 1;
}
#endif /* BW_NAMES_PREFILTER */

#endif /* BW_NAMES_H */

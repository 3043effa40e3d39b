/* What KubeArmor's policy presets look for (shared/presets.py), read from kernel objects: shared by
 * the monitor's preset records (bpf/presets/presets.c, process/exec.c) and the enforcers' programs
 * (bpf/enforce). Plain reads only, no maps: a header any program may include. */
#ifndef BW_PRESETS_H
#define BW_PRESETS_H

#include "events.h"
#include "bw_read.h"

#define BW_PROT_EXEC 0x4
#define BW_MAP_ANONYMOUS 0x20
#define BW_VM_EXEC 0x4
#define BW_PROC_SUPER_MAGIC 0x9fa0
#define BW_ENVIRON_WORD 0x006e6f7269766e65ULL  /* "environ\0" read as a little-endian u64 */
#define BW_FILELESS 0x100                    /* bw_fileless(): yes (with BW_PRE_MEMFD for a memfd) */
#define BW_ERRNO_MAX 4095

/* BW_FILELESS (| BW_PRE_MEMFD) when `file` has no link left: a memfd, a deleted or an O_TMPFILE file,
 * so exec'ing it runs a program no path names; 0 otherwise. A memfd's dentry is its own parent. */
static __always_inline __u32 bw_fileless(struct file *file)
{
	struct inode *inode = NULL;
	struct dentry *dentry = NULL, *parent = NULL;
	unsigned int nlink = 1;

	if (!file)
		return 0;
	BW_READ(inode, file, f_inode);
	if (!inode)
		return 0;
	BW_READ(nlink, inode, __i_nlink);
	if (nlink)
		return 0;
	BW_READ(dentry, file, f_path.dentry);
	if (dentry)
		BW_READ(parent, dentry, d_parent);
	return BW_FILELESS | (dentry && parent == dentry ? BW_PRE_MEMFD : 0);
}

/* The host tgid of the process whose environment `file` is (/proc/<pid>/environ, or a thread's
 * /proc/<pid>/task/<tid>/environ: that thread's process); 0 when it is no such file or the process
 * is gone. The name is inline in the dentry (short): its first 8 bytes are always readable. */
static __always_inline __u32 bw_environ_tgid(struct file *file)
{
	struct inode *inode = NULL;
	struct super_block *sb = NULL;
	struct dentry *dentry = NULL;
	const unsigned char *name = NULL;
	struct proc_inode *pi;
	struct pid *pid = NULL;
	struct hlist_node *first = NULL;
	struct task_struct *owner;
	unsigned long magic = 0;
	__u64 word = 0;
	int tgid = 0;

	if (!file)
		return 0;
	BW_READ(inode, file, f_inode);
	if (!inode)
		return 0;
	BW_READ(sb, inode, i_sb);
	if (!sb)
		return 0;
	BW_READ(magic, sb, s_magic);
	if (magic != BW_PROC_SUPER_MAGIC)
		return 0;
	BW_READ(dentry, file, f_path.dentry);
	if (!dentry)
		return 0;
	BW_READ(name, dentry, d_name.name);
	if (!name || bpf_probe_read_kernel(&word, sizeof(word), name) || word != BW_ENVIRON_WORD)
		return 0;
	pi = bw_container_of(inode, struct proc_inode, vfs_inode);
	BW_READ(pid, pi, pid);
	if (!pid)
		return 0;
	BW_READ(first, pid, tasks[0].first);          /* PIDTYPE_PID: the task this pid names */
	if (!first)
		return 0;
	owner = bw_container_of(first, struct task_struct, pid_links[0]);
	BW_READ(tgid, owner, tgid);
	return tgid > 0 ? (__u32)tgid : 0;
}

#ifdef BW_MAPLE_MM
/* The vma of `task` holding `addr`, found by walking its maple tree as mtree_range_walk does (6.1+:
 * mm->mm_mt); NULL when not found. An encoded node is the node's address | type << 3 (the root's also
 * | 2); a slot holds a child node, or in a leaf the vma. Nodes are freed by RCU, which the tracepoint
 * holds. */
#define BW_MT_DEPTH 10
static __always_inline struct vm_area_struct *bw_find_vma(struct task_struct *task, unsigned long addr)
{
	struct mm_struct *mm = NULL;
	void *entry = NULL;

	BW_READ(mm, task, mm);
	if (!mm)
		return NULL;
	BW_READ(entry, mm, mm_mt.ma_root);
	for (int depth = 0; depth < BW_MT_DEPTH; depth++) {
		unsigned long enc = (unsigned long)entry, *pivots;
		unsigned int type = (enc >> 3) & 15, n, off;
		struct maple_node *node;
		void **slots;

		if (enc <= 4096 || (!depth && (enc & 3) != 2))
			return NULL;                 /* no node: nothing, or the root's one entry (index 0) */
		node = (struct maple_node *)(enc & ~255UL);
		/* addresses by offsetof: bcc would turn node->mr64.pivot into a read of the array */
		if (type == 3) {                     /* maple_arange_64 */
			pivots = (unsigned long *)((char *)node + __builtin_offsetof(struct maple_node, ma64.pivot));
			slots = (void **)((char *)node + __builtin_offsetof(struct maple_node, ma64.slot));
			n = 10;
		} else if (type == 1 || type == 2) { /* maple_leaf_64, maple_range_64 */
			pivots = (unsigned long *)((char *)node + __builtin_offsetof(struct maple_node, mr64.pivot));
			slots = (void **)((char *)node + __builtin_offsetof(struct maple_node, mr64.slot));
			n = 16;
		} else {
			return NULL;
		}
		off = n - 1;
		for (unsigned int i = 0; i < 15; i++) {
			unsigned long piv = 0;

			if (i + 1 >= n)
				break;
			bpf_probe_read_kernel(&piv, sizeof(piv), &pivots[i]);
			if (addr <= piv || (!piv && i)) {   /* a 0 pivot past the first: the data ended */
				off = i;
				break;
			}
		}
		entry = NULL;
		bpf_probe_read_kernel(&entry, sizeof(entry), &slots[off & 15]);
		if (type == 1)
			return (struct vm_area_struct *)entry;
	}
	return NULL;
}

/* Whether making [addr, ...) executable (mprotect) makes anonymous memory executable: the mapping
 * holding addr has no file and was not executable before. */
static __always_inline int bw_anon_vma_gains_exec(struct task_struct *task, unsigned long addr)
{
	struct vm_area_struct *vma = bw_find_vma(task, addr);
	struct file *file = NULL;
	unsigned long start = 0, end = 0, flags = 0;

	if (!vma || (unsigned long)vma <= 4096)
		return 0;
	BW_READ(start, vma, vm_start);
	BW_READ(end, vma, vm_end);
	if (addr < start || addr >= end)
		return 0;
	BW_READ(file, vma, vm_file);
	BW_READ(flags, vma, vm_flags);
	return !file && !(flags & BW_VM_EXEC);
}
#endif /* BW_MAPLE_MM */

#endif /* BW_PRESETS_H */

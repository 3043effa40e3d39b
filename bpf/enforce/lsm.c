/* BPF-LSM enforcer: exec (bprm_check_security), file opens (file_open), sockets (socket_create) and
 * capabilities (capable), refused inline with -EPERM, only for tasks whose mount namespace is selected.
 * Presets that Block (bw_enf_preset; the namespace's flags have BW_LSM_PRESET_BIT(preset)): a fileless
 * exec (bprm_check_security: the file has no link left), another process's environ (file_open), an
 * executable anonymous mapping (mmap_file with no file and PROT_EXEC; file_mprotect adding PROT_EXEC
 * to a mapping with no file), each refused with -EPERM and reported (BW_OP_ENF_PRESET).
 *
 * The kernel does not run the matcher: user space (services/enforcer/bpflsm/rules.py) splits every path
 * a namespace's rules name into classes, asks shared.matcher.decide once per (class, source class,
 * access, owner) and writes the answers here. The kernel only finds the classes:
 *   - a path (bpf_d_path; a dentry walk where the kernel refuses that helper here, 5.10) is looked up
 *     in an LPM trie keyed (mntns, kind, path): exact entries are the
 *     path with its NUL, directory entries the directory with its '/' (the longest one wins); a
 *     directory entry has two classes: a direct child, or deeper (the rest of the path has a '/');
 *   - the source (the current task's executable, for fromSource) the same way, kind BW_LSM_SOURCE,
 *     where bpf_d_path is allowed (not in capable: Capabilities fromSource rules are not enforced);
 *   - a socket by (family, type, protocol), a capability by its number.
 * A (mntns, kind, class, source class) verdict then holds one action per access slot: read, write,
 * exec, each for a non-owner and for the owner. Missing entries allow. Rules change by map updates.
 */
#include "bw_enforce.h"

#define BW_EPERM 1
/* kinds BW_LSM_PROCESS .. BW_LSM_CAP, actions BW_ACT_* and BW_LSM_PATH: events.h (they are in reports);
 * the kinds are also bits of the namespace's flags */
#define BW_LSM_SOURCE 5
#define BW_LSM_NEEDS_SOURCE 8                /* flags bit (kind + 8): this kind's verdicts use sources */
#define BW_FMODE_WRITE 0x2
#define BW_FMODE_EXEC 0x20
#define BW_O_TRUNC 01000
#define BW_MAX_ERRNO 4095
#define BW_LSM_PRESET_BIT(p) (1u << (16 + (p)))  /* namespace flags: a Block verdict for preset p */

struct bw_lsm_pkey {
	__u32 prefixlen;                         /* bits: 64 + 8 * bytes of path compared */
	__u32 mntns;
	__u32 kind;
	char path[BW_LSM_PATH];
};

struct bw_lsm_entry {
	__u32 cls;                               /* directory: cls direct child, cls + 1 deeper */
	__u32 len;                               /* bytes of the entry's path (a directory's ends in '/') */
	__u32 dir;
};

struct bw_lsm_vkey {
	__u32 mntns;
	__u32 kind;
	__u32 res;
	__u32 src;
};

struct bw_lsm_verdict {
	__u32 rule_id[8];                        /* slot = access * 2 + owner; access 0 read 1 write 2 exec */
	__u8 action[8];                          /* 0 allow, BW_ACT_BLOCK, BW_ACT_AUDIT */
};

struct bw_lsm_scratch {
	struct bw_lsm_pkey res;
	struct bw_lsm_pkey src;
};

BPF_LPM_TRIE(bw_lsm_paths, struct bw_lsm_pkey, struct bw_lsm_entry, 65536);
BPF_HASH(bw_lsm_verdicts, struct bw_lsm_vkey, struct bw_lsm_verdict, 65536);
BPF_HASH(bw_lsm_net, struct bw_net_key, __u32, 16384);
BPF_PERCPU_ARRAY(bw_lsm_scratch_map, struct bw_lsm_scratch, 1);

/* A path into `out` (BW_LSM_PATH bytes): the length with its NUL, or negative. 5.10 refuses bpf_d_path
 * in LSM hooks; the enforcer then compiles this file with BW_NO_D_PATH and paths are walked instead. */
#ifdef BW_NO_D_PATH
#include "bw_lsm_path.h"
BPF_PERCPU_ARRAY(bw_lsm_walk_map, struct bw_lsm_walk, 1);

static __always_inline long bw_lsm_d_path(struct path *path, char *out)
{
	__u32 zero = 0;
	struct bw_lsm_walk *w = bw_lsm_walk_map.lookup(&zero);

	return w ? bw_lsm_walk_path(w, path, out) : -1;
}
#else
static __always_inline long bw_lsm_d_path(struct path *path, char *out)
{
	return bpf_d_path(path, out, BW_LSM_PATH);
}
#endif

/* A preset report's file: its whole path (0 when unreadable). */
static __always_inline const char *bw_lsm_report_path(struct file *file, struct bw_lsm_scratch *s)
{
	long n = bw_lsm_d_path((struct path *)&file->f_path, s->res.path);

	return n > 1 ? s->res.path : 0;
}

static __always_inline __u32 bw_lsm_flags(__u32 *mntns_out)
{
	__u32 mntns = bw_current_mntns(bw_current());
	__u32 *flags;

	*mntns_out = mntns;
	if (!mntns)
		return 0;
	flags = bw_enf_ns.lookup(&mntns);
	return flags ? *flags : 0;
}

/* The class of the path in k->path (n: bpf_d_path's answer, the length with its NUL); 0: no entry. */
static __always_inline __u32 bw_lsm_path_class(struct bw_lsm_pkey *k, __u32 mntns, __u32 kind, long n)
{
	struct bw_lsm_entry *e;
	volatile __u32 *last;
	__u32 len, cls;

	if (n <= 1 || n > BW_LSM_PATH)
		return 0;                        /* unreadable or too long: judged as named by no entry */
	k->mntns = mntns;
	k->kind = kind;
	k->prefixlen = 64 + (__u32)n * 8;
	e = bw_lsm_paths.lookup(k);
	if (!e)
		return 0;
	cls = e->cls;
	if (!e->dir)
		return cls;
	len = e->len;
	/* Deeper: the path's last '/' lies after the directory's own. The position is kept in the key's
	 * prefixlen (the lookup is done) through a volatile store: comparing each position with the
	 * entry's length inside the loop would make the verifier keep a state per (iteration, length
	 * seen), a quadratic count that 5.10 refuses (E2BIG). */
	last = (volatile __u32 *)&k->prefixlen;
	*last = 0;
	for (int i = 0; i < BW_LSM_PATH; i++) {
		if (i + 1 >= n)
			break;
		if (k->path[i] == '/')
			*last = i;
	}
	return *last >= len ? cls + 1 : cls;
}

/* The source class of the current task's executable (0: none of the namespace's sources). */
static __always_inline __u32 bw_lsm_source(struct bw_lsm_scratch *s, __u32 mntns, __u32 flags, __u32 kind)
{
	struct task_struct *task = bw_current();
	struct mm_struct *mm = NULL;
	struct file *exe = NULL;
	long n;

	if (!(flags & (1u << (kind + BW_LSM_NEEDS_SOURCE))))
		return 0;
	BW_LOAD(mm, task, mm);                   /* a plain load where the task is BTF-typed (5.11+) */
	if (!mm)
		return 0;
	BW_LOAD(exe, mm, exe_file);
	if (!exe)
		return 0;
	n = bw_lsm_d_path((struct path *)&exe->f_path, s->src.path);
	return bw_lsm_path_class(&s->src, mntns, BW_LSM_SOURCE, n);
}

static __always_inline void bw_lsm_report(__u32 mntns, __u32 kind, __u32 action, __u32 rule_id,
					  __u32 a0, __u32 a1, __u32 a2, const char *res)
{
	struct task_struct *task = bw_current();
	struct bw_lsm_event *r = bw_enf_events.ringbuf_reserve(sizeof(*r));

	bw_enf_stat(0);
	if (!r) {
		bw_enf_stat(1);
		return;
	}
	bw_enf_fill(&r->hdr, BW_OP_ENF_LSM, sizeof(*r), &r->task, &r->enf, task, mntns, kind | (action << 8),
		    rule_id, a0, a1, a2);
	r->res[0] = 0;
	if (res)
		bpf_probe_read_kernel_str(r->res, sizeof(r->res), res);
	bw_task_exe(&r->exe, task);
	bw_enf_events.ringbuf_submit(r, 0);
}

/* The verdict's action for `slot`, reported when it is not a plain allow; -EPERM when it blocks. */
static __always_inline int bw_lsm_judge(__u32 mntns, __u32 kind, __u32 res_cls, __u32 src_cls, __u32 slot,
					__u32 a0, __u32 a1, __u32 a2, const char *res)
{
	struct bw_lsm_vkey vk = {.mntns = mntns, .kind = kind, .res = res_cls, .src = src_cls};
	struct bw_lsm_verdict *v = bw_lsm_verdicts.lookup(&vk);
	__u32 action;

	if (!v)
		return 0;
	slot &= 7;
	action = v->action[slot];
	if (!action)
		return 0;
	bw_lsm_report(mntns, kind, action, v->rule_id[slot], a0, a1, a2, res);
	if (action != BW_ACT_BLOCK) {
		bw_enf_stat(3);
		return 0;
	}
	bw_enf_stat(2);
	return -BW_EPERM;
}

/* Whether `file` lives on a mount of no namespace (overlayfs' private clones: its backing files). */
static __always_inline int bw_lsm_internal_mount(struct file *file)
{
	struct vfsmount *vfsmnt = NULL;
	struct mnt_namespace *ns = NULL;
	struct mount *mnt;

	BW_READ(vfsmnt, file, f_path.mnt);
	if (!vfsmnt)
		return 1;
	mnt = bw_container_of(vfsmnt, struct mount, mnt);
	BW_READ(ns, mnt, mnt_ns);
	return !ns || (unsigned long)ns >= (unsigned long)-BW_MAX_ERRNO;
}

/* The Block verdict of `preset` for the namespace with these flags, or NULL. */
static __always_inline struct bw_verdict *bw_lsm_preset(__u32 flags, __u32 mntns, __u32 preset)
{
	if (!(flags & BW_LSM_PRESET_BIT(preset)))
		return NULL;
	return bw_match_preset(mntns, preset);
}

/* Refuse a preset's attack: report it (res: a kernel string or NULL) and -EPERM. */
static __always_inline int bw_lsm_refuse_preset(__u32 mntns, __u32 preset, struct bw_verdict *v, __u32 pre,
						__u32 a1, __u32 a2, const char *res)
{
	bw_preset_report(bw_current(), mntns, preset, v, pre, a1, a2, res);
	bw_enf_stat(2);
	return -BW_EPERM;
}

/* filelessExec: a memfd is named by its own name, a deleted file by its path (d_path: "... (deleted)"). */
static __always_inline int bw_lsm_fileless(struct file *file, __u32 flags, __u32 mntns)
{
	struct bw_verdict *v = bw_lsm_preset(flags, mntns, BW_PRESET_FILELESS_EXEC);
	struct bw_lsm_scratch *s;
	const unsigned char *name = NULL;
	struct dentry *dentry = NULL;
	__u32 zero = 0, fileless;

	if (!v)
		return 0;
	fileless = bw_fileless(file);
	if (!fileless)
		return 0;
	if (fileless & BW_PRE_MEMFD) {
		BW_READ(dentry, file, f_path.dentry);
		if (dentry)
			BW_READ(name, dentry, d_name.name);
		return bw_lsm_refuse_preset(mntns, BW_PRESET_FILELESS_EXEC, v, BW_PRE_MEMFD, 0, 0, (const char *)name);
	}
	s = bw_lsm_scratch_map.lookup(&zero);
	if (!s)
		return bw_lsm_refuse_preset(mntns, BW_PRESET_FILELESS_EXEC, v, 0, 0, 0, 0);
	return bw_lsm_refuse_preset(mntns, BW_PRESET_FILELESS_EXEC, v, 0, 0, 0, bw_lsm_report_path(file, s));
}

/* protectEnv: another process's /proc/<pid>/environ. */
static __always_inline int bw_lsm_environ(struct file *file, __u32 flags, __u32 mntns)
{
	struct bw_verdict *v = bw_lsm_preset(flags, mntns, BW_PRESET_PROTECT_ENV);
	struct bw_lsm_scratch *s;
	__u32 zero = 0, target;

	if (!v)
		return 0;
	target = bw_environ_tgid(file);
	if (!target || target == (__u32)(bpf_get_current_pid_tgid() >> 32))
		return 0;
	s = bw_lsm_scratch_map.lookup(&zero);
	if (!s)
		return bw_lsm_refuse_preset(mntns, BW_PRESET_PROTECT_ENV, v, 0, target, 0, 0);
	return bw_lsm_refuse_preset(mntns, BW_PRESET_PROTECT_ENV, v, 0, target, 0, bw_lsm_report_path(file, s));
}

static __always_inline int bw_lsm_file_in(struct file *file, __u32 kind, __u32 access, __u32 mntns, __u32 flags)
{
	struct bw_lsm_scratch *s;
	__u32 zero = 0, res, src, owner;
	long n;

	if (!(flags & (1u << kind)))
		return 0;
	if (bw_lsm_internal_mount(file))
		return 0;
	s = bw_lsm_scratch_map.lookup(&zero);
	if (!s)
		return 0;
	n = bw_lsm_d_path((struct path *)&file->f_path, s->res.path);
	if (n <= 1 || n > BW_LSM_PATH)
		s->res.path[0] = 0;              /* reported as no path (n is not used after the class) */
	res = bw_lsm_path_class(&s->res, mntns, kind, n);
	src = bw_lsm_source(s, mntns, flags, kind);
	owner = file->f_inode->i_uid.val == (__u32)bpf_get_current_uid_gid();
	return bw_lsm_judge(mntns, kind, res, src, access * 2 + owner, access, owner, 0, s->res.path);
}

LSM_PROBE(bprm_check_security, struct linux_binprm *bprm)
{
	struct file *file = bprm->file;
	__u32 mntns, flags;
	int ret;

	if (!file)
		return 0;
	flags = bw_lsm_flags(&mntns);
	if (!flags)
		return 0;
	ret = bw_lsm_fileless(file, flags, mntns);
	if (ret)
		return ret;
	return bw_lsm_file_in(file, BW_LSM_PROCESS, 2, mntns, flags);
}

LSM_PROBE(file_open, struct file *file)
{
	__u32 access, mntns, flags;
	int ret;

	if (file->f_mode & BW_FMODE_EXEC)
		return 0;                        /* the exec itself: judged by bprm_check_security */
	flags = bw_lsm_flags(&mntns);
	if (!flags)
		return 0;
	ret = bw_lsm_environ(file, flags, mntns);
	if (ret)
		return ret;
	access = (file->f_mode & BW_FMODE_WRITE) || (file->f_flags & BW_O_TRUNC) ? 1 : 0;
	return bw_lsm_file_in(file, BW_LSM_FILE, access, mntns, flags);
}

/* anonMapExec: an anonymous mapping (MAP_ANONYMOUS, as the monitor's preset program judges it) with
 * PROT_EXEC. Not `file == NULL`: 6.12's verifier takes this hook's file argument for a trusted pointer,
 * never NULL, and drops that test's NULL branch as dead code (the argument was only marked nullable
 * upstream later), so such a program never refuses anything there. */
LSM_PROBE(mmap_file, struct file *file, unsigned long reqprot, unsigned long prot, unsigned long mflags)
{
	struct bw_verdict *v;
	__u32 mntns, flags;

	if (!(mflags & BW_MAP_ANONYMOUS) || !(prot & BW_PROT_EXEC))
		return 0;
	flags = bw_lsm_flags(&mntns);
	v = bw_lsm_preset(flags, mntns, BW_PRESET_ANON_MAP_EXEC);
	if (!v)
		return 0;
	return bw_lsm_refuse_preset(mntns, BW_PRESET_ANON_MAP_EXEC, v, 0, (__u32)prot, (__u32)mflags, 0);
}

/* anonMapExec: PROT_EXEC added to a mapping with no file that was not executable. */
LSM_PROBE(file_mprotect, struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot)
{
	struct bw_verdict *v;
	struct file *vfile = NULL;
	unsigned long vm_flags = 0;
	__u32 mntns, flags;

	if (!(prot & BW_PROT_EXEC))
		return 0;
	flags = bw_lsm_flags(&mntns);
	v = bw_lsm_preset(flags, mntns, BW_PRESET_ANON_MAP_EXEC);
	if (!v)
		return 0;
	BW_READ(vfile, vma, vm_file);
	BW_READ(vm_flags, vma, vm_flags);
	if (vfile || (vm_flags & BW_VM_EXEC))
		return 0;
	return bw_lsm_refuse_preset(mntns, BW_PRESET_ANON_MAP_EXEC, v, BW_PRE_MPROTECT, (__u32)prot, 0, 0);
}

LSM_PROBE(socket_create, int family, int type, int protocol, int kern)
{
	struct bw_net_key k = {.family = (__u32)family, .type = (__u32)type & 0xF, .protocol = (__u32)protocol};
	struct bw_lsm_scratch *s;
	__u32 zero = 0, mntns, flags, res = 0, src, *cls;

	if (kern || (family != 2 && family != 10))
		return 0;                        /* Network rules judge IPv4 and IPv6 sockets */
	flags = bw_lsm_flags(&mntns);
	if (!(flags & (1u << BW_LSM_NETWORK)))
		return 0;
	s = bw_lsm_scratch_map.lookup(&zero);
	if (!s)
		return 0;
	k.mntns = mntns;
	cls = bw_lsm_net.lookup(&k);
	if (!cls) {
		k.protocol = BW_ANY;
		cls = bw_lsm_net.lookup(&k);
	}
	if (cls)
		res = *cls;
	src = bw_lsm_source(s, mntns, flags, BW_LSM_NETWORK);
	return bw_lsm_judge(mntns, BW_LSM_NETWORK, res, src, 0, (__u32)family, (__u32)type & 0xF,
			    (__u32)protocol, 0);
}

/* bpf_d_path is not allowed in this hook: no source classes (fromSource rules stay unsupported). */
LSM_PROBE(capable, const struct cred *cred, struct user_namespace *ns, int cap, unsigned int opts)
{
	__u32 mntns, flags;

	if ((opts & 2) || cap < 0 || cap >= 64)   /* CAP_OPT_NOAUDIT: a probe, not a use */
		return 0;
	flags = bw_lsm_flags(&mntns);
	if (!(flags & (1u << BW_LSM_CAP)))
		return 0;
	return bw_lsm_judge(mntns, BW_LSM_CAP, (__u32)cap + 1, 0, 0, (__u32)cap, 0, 0, 0);
}

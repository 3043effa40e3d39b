/* The one kernel <-> user-space contract of Bulwark's BPF programs.
 *
 * Every record in the ring buffer starts with struct bw_event_hdr (op code, record size, ktime);
 * user space declares these constants and layouts once, in shared/bpf/abi.py, and the monitor's
 * start-up self-check compares every member of every struct here (through the BTF of the compiled
 * self-check program, bpf/selfcheck/selfcheck.c) with that copy: a struct added here must be added
 * there and to the self-check's anchor.
 * Paths (struct bw_path) hold components LEAF FIRST, each NUL-terminated: "true\0bin\0usr\0"
 * is /usr/bin/true. User space reverses and joins them.
 */
#ifndef BW_EVENTS_H
#define BW_EVENTS_H

enum bw_op {
	BW_OP_EXEC = 1,                          /* struct bw_exec_event */
	BW_OP_PROC = 2,                          /* struct bw_proc_event: a process's exe and argv, once per process */
	BW_OP_FORK = 3,                          /* struct bw_sys_event ... */
	BW_OP_EXIT = 4,
	BW_OP_FILE = 5,                          /* open, unlink, rmdir, chown */
	BW_OP_NET = 6,                           /* socket, connect, accept, bind, listen */
	BW_OP_CAP = 7,                           /* capability:cap_capable */
	BW_OP_SYSCALL = 8,                       /* setuid family, ptrace, mount, and wanted raw syscalls */
	BW_OP_ENF_SIGNAL = 9,                    /* struct bw_enf_event: the signal enforcer killed a process */
	BW_OP_ENF_LSM = 10,                      /* struct bw_lsm_event: BPF-LSM refused or audited an operation */
	BW_OP_PRESET = 11,                       /* struct bw_sys_event: a preset's attack, seen by the monitor */
	BW_OP_ENF_PRESET = 12,                   /* struct bw_lsm_event: an enforcer blocked a preset's attack */
};

/* Visibility bits: bw_visibility maps mntns to the kinds emitted (bw_vis_default: any other mntns). */
#define BW_VIS_PROCESS 1
#define BW_VIS_FILE 2
#define BW_VIS_NETWORK 4
#define BW_VIS_CAPABILITIES 8
#define BW_VIS_SYSCALL 16
/* ... and a preset's records (BW_OP_PRESET), emitted only where a rule asks for that preset */
#define BW_VIS_PRESET_FILELESS 128
#define BW_VIS_PRESET_ENV 256
#define BW_VIS_PRESET_ANON_EXEC 512
#define BW_VIS_PRESET_ENTERED 1024

/* KubeArmor's policy presets (shared/presets.py) */
enum bw_preset {
	BW_PRESET_FILELESS_EXEC = 1,             /* exec of a memfd or a deleted file */
	BW_PRESET_PROTECT_ENV = 2,               /* open of another process's /proc/<pid>/environ */
	BW_PRESET_ANON_MAP_EXEC = 3,             /* an executable anonymous mapping (mmap, mprotect) */
	BW_PRESET_EXEC = 4,                      /* exec by a process that entered the pid namespace from outside */
};

/* Details of a preset's record and report (BW_PRE_* bits) */
#define BW_PRE_MEMFD 1                       /* the program is a memfd (its name, not a path) */
#define BW_PRE_MPROTECT 2                    /* mprotect (else mmap) */
#define BW_PRE_KILLED 4                      /* a report: the signal enforcer killed it (else BPF-LSM refused it) */

enum bw_syscall {
	BW_SYS_EXECVE = 0,
	BW_SYS_EXECVEAT = 1,
};

#define BW_COMM_LEN 16
#define BW_TTY_LEN 16                        /* the controlling tty's name (tty->name: pts0, tty1, ttyS0) */
#define BW_FILENAME_LEN 512
#define BW_ARGS_LEN 256                      /* bytes of a process's command line kept (its argv) */
#define BW_NAME_MAX 256                      /* bytes read per path component (NAME_MAX + NUL) */
#define BW_PATH_SPAN 512                     /* a component may only start below this offset */
#define BW_PATH_BUF (BW_PATH_SPAN + BW_NAME_MAX)
#define BW_PATH_DEPTH 32                     /* components kept */
#define BW_PATH_ITERS 40                     /* loop bound: components + mount crossings */

/* struct bw_path.flags */
#define BW_PATH_COMPLETE 1                   /* the walk reached the root: an absolute path */
#define BW_PATH_TRUNCATED 2                  /* gave up (depth, space or loop bound) */

/* struct bw_proc_event.args_flags */
#define BW_ARGS_TRUNCATED 1                  /* the command line was longer than BW_ARGS_LEN */
#define BW_ARGS_FAULT 2                      /* it could not be read from user memory */

/* struct bw_exec_event.flags */
#define BW_EXEC_FILENAME_TRUNCATED 1         /* the filename filled BW_FILENAME_LEN */
#define BW_EXEC_FILENAME_FROM_KERNEL 2       /* user read failed; taken from sched_process_exec */

struct bw_event_hdr {
	__u32 op;
	__u32 size;
	__u64 ktime;                             /* bpf_ktime_get_ns(), CLOCK_MONOTONIC */
};

struct bw_path {
	__u16 len;                               /* bytes used in buf */
	__u16 flags;
	__u16 depth;                             /* components in buf */
	__u16 pad;
	char buf[BW_PATH_BUF];
};

struct bw_exec_event {
	struct bw_event_hdr hdr;                 /* ktime: when the caller entered execve */
	__u32 pid;                               /* caller's tgid (host) */
	__u32 tid;                               /* calling thread (host) */
	__u32 ppid;                              /* real_parent's tgid (host) */
	__u32 ns_pid;                            /* caller's tgid in its own pid namespace */
	__u32 ns_ppid;                           /* parent's tgid in the caller's pid ns, 0 if not visible */
	__u32 uid;
	__u32 gid;
	__u32 mntns;                             /* nsproxy->mnt_ns->ns.inum */
	__u32 pidns;                             /* inum of the caller's active pid namespace */
	__u32 syscall;                           /* enum bw_syscall */
	__s32 dirfd;                             /* execveat's fd; AT_FDCWD (-100) for execve */
	__u32 flags;                             /* BW_EXEC_* */
	__u32 at_flags;                          /* execveat's flags */
	__u32 pad;
	__u64 cgroup_id;
	__s64 ret;                               /* execve's return: 0 or -errno */
	char comm[BW_COMM_LEN];                  /* caller's comm, before the new image */
	char filename[BW_FILENAME_LEN];          /* as the caller wrote it */
	struct bw_path exe;                      /* caller's mm->exe_file */
	struct bw_path parent_exe;               /* real_parent's mm->exe_file */
	struct bw_path cwd;                      /* caller's fs->pwd */
	char tty[BW_TTY_LEN];                    /* caller's controlling tty, "" when none */
};

/* Who did it: filled for every record but exec's (which predates it and keeps its own fields). */
struct bw_task_info {
	__u32 pid;                               /* tgid (host) */
	__u32 tid;
	__u32 ppid;                              /* real_parent's tgid (host) */
	__u32 ns_pid;
	__u32 ns_ppid;
	__u32 uid;
	__u32 gid;
	__u32 mntns;
	__u32 pidns;
	__u32 pad;
	__u64 cgroup_id;
	char comm[BW_COMM_LEN];
};

/* A process's canonical executable and command line, sent before the first record of each process
 * (and again after an exec): user space caches them per tgid instead of every record carrying them. */
struct bw_proc_event {
	struct bw_event_hdr hdr;
	struct bw_task_info task;
	struct bw_path exe;
	char tty[BW_TTY_LEN];                    /* its controlling tty, "" when none */
	__u16 args_len;                          /* bytes of args used */
	__u16 args_flags;                        /* BW_ARGS_* */
	__u32 pad;
	char args[BW_ARGS_LEN];                  /* mm->arg_start..arg_end: argv[0], argv[1], ... each NUL-ended */
};

#define BW_SYS_NAME_LEN 512
#define BW_SYS_AUX_LEN 128
#define BW_MOUNT_SOURCE_LEN 96               /* a mount's aux: source, then fstype to BW_SYS_AUX_LEN */

/* struct bw_sys_event.flags */
#define BW_SYS_F_DIR_CWD 1                   /* dir holds the cwd: name is relative to it */
#define BW_SYS_F_DIR_FD 2                    /* dir holds the path of the dirfd (args[0]) */
#define BW_SYS_F_NAME_FAULT 4                /* name could not be read from user memory */
#define BW_SYS_F_NAME_TRUNC 8                /* name filled BW_SYS_NAME_LEN */
#define BW_SYS_F_AUX_STR 16                  /* aux holds a string (mount source) */
#define BW_SYS_F_SOCK 32                     /* args[3..5]: the fd's socket family, type, protocol */
#define BW_SYS_F_RETRY 64                    /* internal: aux holds the name pointer and dirfd */
#define BW_SYS_F_OPEN 128                    /* an open: at exit args[4] = owner uid of the opened file */
#define BW_SYS_F_OWNER 256                   /* args[4] holds that owner uid */
#define BW_SYS_F_DYING 512                   /* a fatal signal (SIGKILL) was already on its way to the process */

/* File, network, capability, process-lifecycle and syscall records share one layout. The record is
 * cut after name[name_len] unless a dir path follows (hdr.size says how much was sent). args, per op:
 *  FILE  open/openat/openat2: dirfd, flags, mode, resolve, owner uid; unlink(at)/rmdir: dirfd, at_flags;
 *        (f/l)chown(at): dirfd, uid, gid, at_flags
 *  NET   fd (ret for socket), addrlen, backlog|flags, family, type, protocol; aux = sockaddr
 *  CAP   cap, -, -; ret = the check's result
 *  FORK  child tgid, child ns pid;  EXIT  exit_code (ret too)
 *  SYSCALL the raw arguments; name = the path argument, if the syscall has one
 *  PRESET args[0] = enum bw_preset, args[1] = BW_PRE_* bits, then per preset:
 *        FILELESS_EXEC: name = the program's own name (a memfd's "memfd:x"), dir = its path, aux = the
 *        exec's filename; PROTECT_ENV: args[2] = the environ's process (host tgid), args[3] = fd, dir =
 *        the file's path; ANON_MAP_EXEC: args[2] prot, args[3] mmap flags, args[4] addr, args[5] len;
 *        EXEC: args[2] = the parent's host tgid, name = the exec's filename, dir = the new program's
 *        path, aux = the parent's comm. Emitted when the syscall succeeded (syscall = its number). */
struct bw_sys_event {
	struct bw_event_hdr hdr;
	struct bw_task_info task;
	__s64 ret;
	__s64 args[6];
	__s32 syscall;                           /* x86_64 syscall number (-1 when none) */
	__u16 flags;                             /* BW_SYS_F_* */
	__u16 name_len;                          /* bytes of name used, NUL included (0: none) */
	__u16 aux_len;                           /* bytes of aux used */
	__u16 pad[3];
	__u8 aux[BW_SYS_AUX_LEN];
	char name[BW_SYS_NAME_LEN];
	struct bw_path dir;                      /* only with BW_SYS_F_DIR_*: sent in full */
};

/* struct bw_enf_info.kind of the signal enforcer (bpf/enforce/signal.c) */
#define BW_ENF_NET 1
#define BW_ENF_CAP 2
#define BW_ENF_REFUSED 0x100                 /* | BW_ENF_NET: refused at creation (EACCES), not killed */
/* ... and of the BPF-LSM enforcer (bpf/enforce/lsm.c): the kind in the low byte, the action in the next */
#define BW_LSM_PROCESS 1
#define BW_LSM_FILE 2
#define BW_LSM_NETWORK 3
#define BW_LSM_CAP 4
#define BW_ACT_BLOCK 1
#define BW_ACT_AUDIT 2
#define BW_LSM_PATH 248                      /* LPM data is at most 256 bytes: mntns + kind + path */

/* What an enforcement program judged, and by which rule. */
struct bw_enf_info {
	__u32 kind;                              /* BW_ENF_*, or BW_LSM_* | BW_ACT_* << 8 */
	__u32 rule_id;                           /* user space maps it back to workload, policy, match */
	__u32 args[3];                           /* family, type, protocol | cap | access, owner */
	__u32 pad;
};

/* One process killed by the signal enforcer (the alert must say the process was killed). */
struct bw_enf_event {
	struct bw_event_hdr hdr;
	struct bw_task_info task;
	struct bw_enf_info enf;
	struct bw_path exe;
};

/* An operation BPF-LSM refused or audited: the resource's path (files, exec) and the executable.
 * Also a preset's attack an enforcer blocked (BW_OP_ENF_PRESET): enf.kind = enum bw_preset,
 * enf.args[0] = BW_PRE_* bits, args[1], args[2] = a mapping's prot and flags or the environ's tgid;
 * res = a memfd's name or a file's path ("": the executable's path, exe, is the program). */
struct bw_lsm_event {
	struct bw_event_hdr hdr;
	struct bw_task_info task;
	struct bw_enf_info enf;
	char res[BW_LSM_PATH];
	struct bw_path exe;
};

#endif /* BW_EVENTS_H */

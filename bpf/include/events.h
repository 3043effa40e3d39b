/* The one kernel <-> user-space contract of Bulwark's BPF programs.
 *
 * Every record in the ring buffer starts with struct bw_event_hdr (op code, record size, ktime);
 * user space mirrors these layouts in services/monitor/decoder.py and the start-up self-check
 * compares sizeof/offsetof of this file with that mirror.
 * Paths (struct bw_path) hold components LEAF FIRST, each NUL-terminated: "true\0bin\0usr\0"
 * is /usr/bin/true. User space reverses and joins them.
 */
#ifndef BW_EVENTS_H
#define BW_EVENTS_H

enum bw_op {
	BW_OP_EXEC = 1,
};

enum bw_syscall {
	BW_SYS_EXECVE = 0,
	BW_SYS_EXECVEAT = 1,
};

#define BW_COMM_LEN 16
#define BW_FILENAME_LEN 512
#define BW_NAME_MAX 256                      /* bytes read per path component (NAME_MAX + NUL) */
#define BW_PATH_SPAN 512                     /* a component may only start below this offset */
#define BW_PATH_BUF (BW_PATH_SPAN + BW_NAME_MAX)
#define BW_PATH_DEPTH 32                     /* components kept */
#define BW_PATH_ITERS 40                     /* loop bound: components + mount crossings */

/* struct bw_path.flags */
#define BW_PATH_COMPLETE 1                   /* the walk reached the root: an absolute path */
#define BW_PATH_TRUNCATED 2                  /* gave up (depth, space or loop bound) */

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
};

#endif /* BW_EVENTS_H */

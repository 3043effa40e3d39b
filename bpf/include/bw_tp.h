/* Tracepoint record layouts we read (see /sys/kernel/tracing/events/<group>/<name>/format;
 * services/monitor/selfcheck.py compares these offsets with the format files at start-up). */
#ifndef BW_TP_H
#define BW_TP_H

struct bw_tp_sys_enter {                     /* syscalls:sys_enter_* */
	__u64 common;                            /* common_type/flags/preempt_count/pid */
	__s32 syscall_nr;
	__u32 pad;
	__u64 args[6];                           /* each argument in an 8-byte slot, from offset 16 */
};

struct bw_tp_sys_exit {                      /* syscalls:sys_exit_* */
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__s64 ret;                               /* offset 16 */
};

struct bw_tp_sched_process_exec {            /* sched:sched_process_exec */
	__u64 common;
	__u32 filename_loc;                      /* __data_loc: low 16 bits = offset in the record */
	__s32 pid;
	__s32 old_pid;
};

struct bw_tp_sched_process_exit {            /* sched:sched_process_exit */
	__u64 common;
	char comm[16];
	__s32 pid;
	__s32 prio;
	__u8 group_dead;                         /* offset 32 */
};

struct bw_tp_cap_capable {                   /* capability:cap_capable */
	__u64 common;
	void *cred;
	void *target_ns;
	void *capable_ns;
	__s32 cap;                               /* offset 32 */
	__s32 ret;                               /* offset 36 */
};

struct bw_tp_raw_sys_enter {                 /* raw_syscalls:sys_enter */
	__u64 common;
	__s64 id;                                /* offset 8 */
	__u64 args[6];                           /* offset 16 */
};

struct bw_tp_raw_sys_exit {                  /* raw_syscalls:sys_exit */
	__u64 common;
	__s64 id;
	__s64 ret;                               /* offset 16 */
};

#endif /* BW_TP_H */

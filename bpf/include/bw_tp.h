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

#endif /* BW_TP_H */

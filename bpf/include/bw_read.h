/* Explicit kernel reads: a kernel pointer of unknown type is followed with bpf_probe_read_kernel, so
 * the code does not depend on bcc's rewriter and a NULL anywhere only yields zeros. The exception is
 * the current task from bw_current() (bw_task.h) and the BTF-typed pointers loaded from it: the
 * verifier knows their types, so plain loads (fault-safe, no helper call) read them. */
#ifndef BW_READ_H
#define BW_READ_H

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define BW_READ(dst, ptr, member) \
	bpf_probe_read_kernel(&(dst), sizeof(dst), &((ptr)->member))

/* A member of the current task from bw_current(), or of a pointer loaded from it: a plain load where
 * the kernel has bpf_get_current_task_btf() (5.11+; the tree's kconfig.h defines BW_HELPER_<name> for
 * every helper this kernel has), an explicit read elsewhere. */
#ifdef BW_HELPER_get_current_task_btf
#define BW_TASK_BTF 1
#define BW_LOAD(dst, ptr, member) ((dst) = (ptr)->member)
#else
#define BW_LOAD(dst, ptr, member) BW_READ(dst, ptr, member)
#endif

#define bw_container_of(ptr, type, member) \
	((type *)((char *)(ptr) - __builtin_offsetof(type, member)))

#endif /* BW_READ_H */

/* Maps shared by every monitor program (one compile unit: bpf/monitor.c). */
#ifndef BW_MAPS_H
#define BW_MAPS_H

#include "events.h"
#include "bw_read.h"

#ifndef BW_RB_PAGES
#define BW_RB_PAGES 4096                     /* 16 MiB with 4 KiB pages; the loader passes -D */
#endif
/* Adaptive wake-up (flags 0): a record wakes the monitor sleeping in epoll only when it had read
 * everything before it; a busy monitor, which is behind by definition, is never woken (it polls). */
#define BW_RB_FLAGS 0
#define BW_AT_FDCWD -100

/* bw_stats indices (per CPU; user space sums them) */
enum bw_stat {
	BW_STAT_LOST = 0,                        /* a record did not fit in the ring buffer */
	BW_STAT_NO_STASH = 1,                    /* exec exit without its enter */
	BW_STAT_STASH_FULL = 2,                  /* no stash slot for a thread at a syscall's enter */
	BW_STAT_PROC_LOST = 3,                   /* a process record (exe) did not fit */
	BW_STAT_FILTERED = 4,                    /* not emitted: kind not visible for the mntns */
	BW_STAT_STALE_STASH = 5,                 /* exit of another syscall than the stashed enter */
	BW_STAT_EMITTED = 6,                     /* records written to the ring buffer */
	BW_STAT_FILTERED_NAMES = 7,              /* of FILTERED: opens dropped by their names (bw_names.h) */
	BW_STAT_LOST_OP = 8,                     /* + op: BW_STAT_LOST per op */
	BW_STAT_N = 24,
};

/* Per-process cache: ids walked once per process, and "its exe was sent" (the entry exists). */
struct bw_proc {
	__u32 pidns;
	__u32 ns_pid;
	__u32 ppid;
	__u32 ns_ppid;
	__u32 mntns;
	__u32 pad;
};

BPF_RINGBUF_OUTPUT(bw_events, BW_RB_PAGES);
BPF_PERCPU_ARRAY(bw_stats, __u64, BW_STAT_N);
BPF_HASH(bw_visibility, __u32, __u32, 16384);     /* mntns -> BW_VIS_* */
/* [BW_VIS_DEFAULT]: BW_VIS_* of any mntns not in bw_visibility; [BW_VIS_ANY]: union of all entries */
#define BW_VIS_DEFAULT 0
#define BW_VIS_ANY 1
BPF_ARRAY(bw_vis_default, __u32, 2);
/* bw_visibility as a direct-mapped array, read without a helper call: slot mntns % BW_VIS_SLOTS
 * holds {mntns, mask} of the one listed namespace that maps there, BW_VIS_SHARED when several do
 * (the hash decides), {0, 0} when none does (the default applies). */
#ifndef BW_VIS_SLOTS
#define BW_VIS_SLOTS 4096                    /* a power of two; tests pass -D to force sharing */
#endif
#define BW_VIS_SHARED 0xffffffff
struct bw_vis_slot {
	__u32 mntns;
	__u32 mask;
};
BPF_ARRAY(bw_vis_slots, struct bw_vis_slot, BW_VIS_SLOTS);
/* A mntns whose mask has BW_VIS_FILE_PATHS but not BW_VIS_FILE emits only the file events whose
 * absolute path starts with an entry of bw_file_paths for that mntns (its rules could match no
 * other; relative and unreadable names are always emitted). Entries: an exact path with its NUL
 * (so /a/b does not cover /a/bc), a directory as a prefix ending in '/'. */
#define BW_VIS_FILE_PATHS 32
/* A mntns whose mask has BW_VIS_CAPS_NAMED but not BW_VIS_CAPABILITIES emits only the checks of the
 * capabilities set in bw_caps_named[0] (bit = capability number; all namespaces' rules together). */
#define BW_VIS_CAPS_NAMED 64
BPF_ARRAY(bw_caps_named, __u64, 1);
#define BW_PATH_KEY_LEN 252                  /* 4 + 252 bytes: the LPM trie's 256-byte data limit */
struct bw_path_key {
	__u32 prefixlen;                         /* bits of mntns + path that must match */
	__u32 mntns;                             /* always fully part of the prefix: byte order is free */
	char path[BW_PATH_KEY_LEN];
};
BPF_LPM_TRIE(bw_file_paths, struct bw_path_key, __u8, 65536);
/* The name signatures of bw_file_paths entries, all namespaces together (bw_names.h): bit
 * bw_name_sig(name) is set for the last name of every entry and of its symlink's target. The
 * prefilter is off until user space arms it. */
#define BW_SIG_BITS 16
#define BW_SIG_BYTES (1 << (BW_SIG_BITS - 3))
struct bw_name_sigs {
	__u32 armed;
	__u32 pad;
	__u8 bits[BW_SIG_BYTES];
};
BPF_ARRAY(bw_name_sigs, struct bw_name_sigs, 1);
BPF_PERCPU_ARRAY(bw_path_scratch, struct bw_path_key, 1);
BPF_TABLE("lru_hash", __u32, struct bw_proc, bw_procs, 65536);
BPF_TABLE("lru_hash", __u32, struct bw_sys_event, bw_sys_stash, 16384);   /* per thread */
BPF_TABLE("lru_hash", __u32, struct bw_sys_event, bw_raw_stash, 4096);
BPF_PERCPU_ARRAY(bw_sys_scratch, struct bw_sys_event, 1);
BPF_PERCPU_ARRAY(bw_proc_scratch, struct bw_proc_event, 1);
/* [0]: BW_CFG_* bits set by user space */
#define BW_CFG_OWNER 1                       /* read the owner of opened files (an ownerOnly rule exists) */
BPF_ARRAY(bw_config, __u32, 1);
/* syscall nr -> 0 (not wanted) or 1 | (path argument index + 1) << 1 | 16 (arg 0 is a dirfd) */
BPF_ARRAY(bw_sys_wanted, __u8, 512);

static __always_inline void bw_stat(__u32 idx)
{
	__u64 *v = bw_stats.lookup(&idx);

	if (v)
		*v += 1;
}

#endif /* BW_MAPS_H */

#!/usr/bin/env bash
# Runs inside a kernel-lab guest (klab.sh run): mounts the kernel filesystems the programs read, runs
# the command, and leaves its exit status in RWDIR/.klab-status (vng's own status says nothing).
#   guest.sh RWDIR CMD...
rw=$1; shift
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
echo "KLAB-GUEST kernel=$(uname -r) lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)"
bash -c "$*"
status=$?
echo "$status" > "$rw/.klab-status"
echo "KLAB-STATUS=$status"
exit "$status"

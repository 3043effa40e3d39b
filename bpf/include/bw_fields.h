/* Every kernel struct member (and size) the programs depend on. The self-check compiles these with the
 * same headers as the programs and compares each with the kernel's BTF: one list, read by both
 * C (as X-macros) and services/monitor/selfcheck.py (which parses the BW_FIELD/BW_SIZE lines).
 * Not here: the maple tree's members (bw_presets.h), which only 6.1+ kernels have. */
#ifndef BW_FIELDS_H
#define BW_FIELDS_H

#define BW_FIELDS(X) \
	X(task_struct, nsproxy) \
	X(task_struct, group_leader) \
	X(task_struct, thread_pid) \
	X(task_struct, real_parent) \
	X(task_struct, tgid) \
	X(task_struct, mm) \
	X(task_struct, fs) \
	X(task_struct, files) \
	X(task_struct, exit_code) \
	X(task_struct, pid) \
	X(files_struct, fdt) \
	X(fdtable, max_fds) \
	X(fdtable, fd) \
	X(file, f_inode) \
	X(file, private_data) \
	X(inode, i_mode) \
	X(inode, i_uid) \
	X(socket, sk) \
	X(sock, sk_type) \
	X(sock, sk_protocol) \
	X(sock, __sk_common.skc_family) \
	X(nsproxy, mnt_ns) \
	X(mnt_namespace, ns.inum) \
	X(pid_namespace, ns.inum) \
	X(pid, level) \
	X(pid, numbers) \
	X(upid, nr) \
	X(upid, ns) \
	X(mm_struct, exe_file) \
	X(mm_struct, arg_start) \
	X(mm_struct, arg_end) \
	X(file, f_path) \
	X(path, mnt) \
	X(path, dentry) \
	X(fs_struct, pwd) \
	X(vfsmount, mnt_root) \
	X(mount, mnt_parent) \
	X(mount, mnt_mountpoint) \
	X(mount, mnt) \
	X(dentry, d_parent) \
	X(dentry, d_name.name) \
	X(pt_regs, di) \
	X(pt_regs, si) \
	X(pt_regs, dx) \
	X(pt_regs, r10) \
	X(task_struct, cred) \
	X(cred, uid) \
	X(cred, gid) \
	X(task_struct, cgroups) \
	X(css_set, dfl_cgrp) \
	X(cgroup, kn) \
	X(kernfs_node, id) \
	X(task_struct, comm) \
	X(task_struct, signal) \
	X(signal_struct, flags) \
	X(signal_struct, tty) \
	X(tty_struct, name) \
	X(inode, __i_nlink) \
	X(inode, i_sb) \
	X(super_block, s_magic) \
	X(proc_inode, pid) \
	X(proc_inode, vfs_inode) \
	X(pid, tasks) \
	X(task_struct, pid_links) \
	X(vm_area_struct, vm_start) \
	X(vm_area_struct, vm_end) \
	X(vm_area_struct, vm_file) \
	X(vm_area_struct, vm_flags)

#define BW_SIZES(X) \
	X(upid) \
	X(path)

#endif /* BW_FIELDS_H */

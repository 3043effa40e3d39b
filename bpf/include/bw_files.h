/* Open files of a task: fd -> struct file, and the socket behind a file. */
#ifndef BW_FILES_H
#define BW_FILES_H

#include "bw_read.h"

#define BW_S_IFMT 0170000
#define BW_S_IFSOCK 0140000

/* cur->files->fdt->fd[fd], or NULL; `cur` is bw_current() (bw_task.h). The table is reached with
 * direct loads; its slot array is untyped for the verifier, so the slot takes one explicit read. */
static __always_inline struct file *bw_fd_file(struct task_struct *cur, long fd)
{
	struct files_struct *files = NULL;
	struct fdtable *fdt = NULL;
	struct file **fds = NULL;
	struct file *f = NULL;
	unsigned int max_fds = 0;

	if (fd < 0)
		return NULL;
	BW_LOAD(files, cur, files);
#ifndef BW_TASK_BTF
	if (!files)
		return NULL;
#endif
	BW_LOAD(fdt, files, fdt);                /* files is NULL once released: the load yields 0 */
	if (!fdt)
		return NULL;
	BW_LOAD(max_fds, fdt, max_fds);
	if ((unsigned long)fd >= max_fds)
		return NULL;
	BW_LOAD(fds, fdt, fd);
	if (!fds)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* Family, type and protocol of the socket open as `fd`; 0 when fd is not a socket. */
static __always_inline int bw_fd_sock(struct task_struct *task, long fd, __s64 *family, __s64 *type,
				      __s64 *protocol)
{
	struct file *f = bw_fd_file(task, fd);
	struct inode *inode = NULL;
	struct socket *sock = NULL;
	struct sock *sk = NULL;
	void *priv = NULL;
	umode_t mode = 0;
	__u16 fam = 0, typ = 0, proto = 0;

	if (!f)
		return 0;
	BW_READ(inode, f, f_inode);
	if (!inode)
		return 0;
	BW_READ(mode, inode, i_mode);
	if ((mode & BW_S_IFMT) != BW_S_IFSOCK)
		return 0;
	BW_READ(priv, f, private_data);
	sock = priv;
	if (!sock)
		return 0;
	BW_READ(sk, sock, sk);
	if (!sk)
		return 0;
	BW_READ(fam, sk, __sk_common.skc_family);
	BW_READ(typ, sk, sk_type);
	BW_READ(proto, sk, sk_protocol);
	*family = fam;
	*type = typ;
	*protocol = proto;
	return 1;
}

#endif /* BW_FILES_H */

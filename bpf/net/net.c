/* Network events: socket, connect, accept/accept4, bind, listen. The socket's family, type and
 * protocol come from the fd's struct sock; addresses are read from user memory (connect/bind at
 * enter, accept's peer at exit). */
#include "events.h"
#include "bw_tp.h"
#include "bw_emit.h"

static __always_inline struct bw_sys_event *bw_net_begin(struct bw_tp_sys_enter *ctx, long fd)
{
	struct task_struct *task = bw_current();
	struct bw_sys_event *e = bw_sys_enter_begin(BW_OP_NET, BW_VIS_NETWORK, ctx->syscall_nr, task);

	if (!e)
		return NULL;
	e->args[0] = fd;
	if (fd >= 0 && bw_fd_sock(task, fd, &e->args[3], &e->args[4], &e->args[5]))
		e->flags |= BW_SYS_F_SOCK;
	return e;
}

int bwmon_socket_e(struct bw_tp_sys_enter *ctx)   /* (family, type, protocol) -> fd */
{
	struct bw_sys_event *e = bw_net_begin(ctx, -1);

	if (!e)
		return 0;
	e->args[3] = ctx->args[0];
	e->args[4] = ctx->args[1];
	e->args[5] = ctx->args[2];
	e->flags |= BW_SYS_F_SOCK;
	bw_sys_stash_put(e);
	return 0;
}

int bwmon_connect_e(struct bw_tp_sys_enter *ctx)  /* connect, bind: (fd, sockaddr, addrlen) */
{
	struct bw_sys_event *e = bw_net_begin(ctx, (int)ctx->args[0]);

	if (!e)
		return 0;
	e->args[1] = (int)ctx->args[2];
	bw_sys_aux(e, (const void *)ctx->args[1], (int)ctx->args[2]);
	bw_sys_stash_put(e);
	return 0;
}

int bwmon_listen_e(struct bw_tp_sys_enter *ctx)   /* (fd, backlog) */
{
	struct bw_sys_event *e = bw_net_begin(ctx, (int)ctx->args[0]);

	if (!e)
		return 0;
	e->args[2] = (int)ctx->args[1];
	bw_sys_stash_put(e);
	return 0;
}

/* accept, accept4: (fd, peer sockaddr, peer addrlen[, flags]). The two pointers wait in aux. */
static __always_inline int bw_accept_enter(struct bw_tp_sys_enter *ctx, int is4)
{
	struct bw_sys_event *e = bw_net_begin(ctx, (int)ctx->args[0]);

	if (!e)
		return 0;
	if (is4)
		e->args[2] = (int)ctx->args[3];
	__builtin_memcpy(e->aux, &ctx->args[1], 8);
	__builtin_memcpy(e->aux + 8, &ctx->args[2], 8);
	bw_sys_stash_put(e);
	return 0;
}

int bwmon_accept_e(struct bw_tp_sys_enter *ctx) { return bw_accept_enter(ctx, 0); }
int bwmon_accept4_e(struct bw_tp_sys_enter *ctx) { return bw_accept_enter(ctx, 1); }

int bwmon_accept_x(struct bw_tp_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct bw_sys_event *e = bw_sys_stash.lookup(&tid);
	void *uaddr = NULL, *ulen = NULL;
	int len = 0;

	if (!e || !e->pad[0])
		return 0;
	__builtin_memcpy(&uaddr, e->aux, 8);
	__builtin_memcpy(&ulen, e->aux + 8, 8);
	e->aux_len = 0;
	if (ctx->ret >= 0 && uaddr && ulen && bpf_probe_read_user(&len, sizeof(len), ulen) == 0) {
		e->args[1] = len;
		bw_sys_aux(e, uaddr, len);
	}
	return bw_sys_exit_common(ctx->ret, ctx->syscall_nr);
}

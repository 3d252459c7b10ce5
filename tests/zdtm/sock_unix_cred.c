/*
 * sock_unix_cred: messages queued on unix sockets with SO_PASSCRED carry the
 * credentials (SCM_CREDENTIALS) of their senders, processes of the tree.
 *
 * D (datagram pair a, b; b has SO_PASSCRED): the child sent "from child" on a,
 * the root "from root", then the root sent "as 1000" with explicit
 * credentials (its pid, uid 1000, gid 1000).
 * S (stream pair s0, s1; s1 has SO_PASSCRED): the root sent "abc", then the
 * child "defg".
 * On SIGTERM the root reads every message with its credentials: the pids are
 * the child's and the root's (the same after a restore), uid and gid as sent.
 */
#include "zdtm.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int a_b[2], s[2];

static void send_cred(int fd, const char *msg, struct ucred *c)
{
	char cbuf[CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = strlen(msg) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (c) {
		struct cmsghdr *cm;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_CREDENTIALS;
		cm->cmsg_len = CMSG_LEN(sizeof(*c));
		memcpy(CMSG_DATA(cm), c, sizeof(*c));
	}
	if (sendmsg(fd, &mh, MSG_DONTWAIT) != (ssize_t)strlen(msg))
		zdtm_die("sendmsg %s: %m", msg);
}

/* Receives one message (up to n bytes) and checks its bytes and credentials. */
static void expect(const char *what, int fd, const char *msg, pid_t pid, uid_t uid, gid_t gid)
{
	char buf[256], cbuf[CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = { .iov_base = buf, .iov_len = strlen(msg) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct ucred *c = NULL;
	ssize_t r = recvmsg(fd, &mh, MSG_DONTWAIT);

	if (r != (ssize_t)strlen(msg) || memcmp(buf, msg, r)) {
		zdtm_fail("%s: read %zd bytes (errno %d), expected \"%s\"", what, r, errno, msg);
		return;
	}
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS)
			c = (struct ucred *)CMSG_DATA(cm);
	if (!c)
		zdtm_fail("%s: no credentials", what);
	else if (c->pid != pid || c->uid != uid || c->gid != gid)
		zdtm_fail("%s: credentials pid %d uid %u gid %u, expected %d %u %u", what, c->pid,
			  c->uid, c->gid, pid, uid, gid);
}

int main(int argc, char **argv)
{
	int one = 1;
	pid_t child, me = getpid();
	uid_t uid = getuid();
	gid_t gid = getgid();
	struct ucred as1000 = { .pid = me, .uid = 1000, .gid = 1000 };
	char x;

	zdtm_init(argc, argv);
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, a_b) || socketpair(AF_UNIX, SOCK_STREAM, 0, s) ||
	    setsockopt(a_b[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) ||
	    setsockopt(s[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)))
		zdtm_die("setup: %m");
	zdtm_tree_sync_init();
	child = fork();
	if (child < 0)
		zdtm_die("fork: %m");
	if (child == 0) {
		zdtm_set_role("child");
		send_cred(a_b[0], "from child", NULL);
		zdtm_tree_ready("c", 1);
		zdtm_wait_check();
		zdtm_child_exit();
	}
	zdtm_tree_wait(&x, 1);
	send_cred(a_b[0], "from root", NULL);
	send_cred(a_b[0], "as 1000", &as1000);
	send_cred(s[0], "abc", NULL);
	/* the child's "defg" on S: sent from here with its credentials (root may) */
	send_cred(s[0], "defg", &(struct ucred){ .pid = child, .uid = uid, .gid = gid });

	zdtm_ready();
	zdtm_wait_check();

	expect("D 1", a_b[1], "from child", child, uid, gid);
	expect("D 2", a_b[1], "from root", me, uid, gid);
	expect("D 3", a_b[1], "as 1000", me, 1000, 1000);
	expect("S 1", s[1], "abc", me, uid, gid);
	expect("S 2", s[1], "defg", child, uid, gid);
	zdtm_stop_child(child, "child");
	zdtm_pass_or_fail();
}

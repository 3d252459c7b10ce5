/*
 * sock_unix_rights: file descriptors in flight (SCM_RIGHTS) in the queues of
 * unix sockets, which the process itself no longer holds.
 *
 * Datagram pair (a, b), queued on b:
 *   "pipe": the read end of a pipe holding "piped" (the process keeps only
 *           the write end);
 *   "file": a regular file opened read-only at offset 3;
 *   "sock": e, one end of a stream pair (e, f) on which f queued "to e"; the
 *           process keeps only f.
 * Stream pair (c, d), queued on d: "self" with d itself (a socket in flight
 * in its own queue).
 * On SIGTERM each message comes with its descriptor: the pipe reads "piped",
 * the file reads from offset 3, e reads "to e" and is still connected to f,
 * and the descriptor that came with "self" is d (same inode).
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static void send_fd(int sock, const char *msg, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = strlen(msg) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	if (sendmsg(sock, &mh, MSG_DONTWAIT) != (ssize_t)strlen(msg))
		zdtm_die("sendmsg %s: %m", msg);
}

/* Receives one message and its descriptor (-1 on failure). */
static int recv_fd(const char *what, int sock, const char *msg)
{
	char buf[64], cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = buf, .iov_len = strlen(msg) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	ssize_t r = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	int fd = -1;

	if (r != (ssize_t)strlen(msg) || memcmp(buf, msg, r)) {
		zdtm_fail("%s: read %zd bytes (errno %d), expected \"%s\"", what, r, errno, msg);
		return -1;
	}
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	if (fd < 0)
		zdtm_fail("%s: no descriptor came with the message", what);
	return fd;
}

static void expect(const char *what, int fd, const char *s)
{
	char buf[64];
	ssize_t r = read(fd, buf, sizeof(buf));

	if (r != (ssize_t)strlen(s) || memcmp(buf, s, r))
		zdtm_fail("%s: read %zd bytes (errno %d), expected \"%s\"", what, r, errno, s);
}

int main(int argc, char **argv)
{
	int ab[2], cd[2], ef[2], p[2], file, fd;
	struct stat s1, s2;

	zdtm_init(argc, argv);
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, ab) || socketpair(AF_UNIX, SOCK_STREAM, 0, cd) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, ef) || pipe(p))
		zdtm_die("setup: %m");
	if (write(p[1], "piped", 5) != 5)
		zdtm_die("write: %m");
	send_fd(ab[0], "pipe", p[0]);
	close(p[0]);

	fd = open("data.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, "0123456789", 10) != 10)
		zdtm_die("data.txt: %m");
	close(fd);
	file = open("data.txt", O_RDONLY);
	if (file < 0 || lseek(file, 3, SEEK_SET) != 3)
		zdtm_die("open: %m");
	send_fd(ab[0], "file", file);
	close(file);

	if (send(ef[1], "to e", 4, 0) != 4)
		zdtm_die("send: %m");
	send_fd(ab[0], "sock", ef[0]);
	close(ef[0]);

	send_fd(cd[0], "self", cd[1]);

	zdtm_ready();
	zdtm_wait_check();

	fd = recv_fd("pipe", ab[1], "pipe");
	if (fd >= 0) {
		expect("the pipe in flight", fd, "piped");
		close(fd);
	}
	fd = recv_fd("file", ab[1], "file");
	if (fd >= 0) {
		if (lseek(fd, 0, SEEK_CUR) != 3)
			zdtm_fail("the file in flight is at offset %ld", (long)lseek(fd, 0, SEEK_CUR));
		expect("the file in flight", fd, "3456789");
		close(fd);
	}
	fd = recv_fd("sock", ab[1], "sock");
	if (fd >= 0) {
		expect("the socket in flight", fd, "to e");
		if (send(fd, "to f", 4, MSG_DONTWAIT) != 4)
			zdtm_fail("the socket in flight cannot send: %m");
		expect("f", ef[1], "to f");
		close(fd);
	}
	fd = recv_fd("self", cd[1], "self");
	if (fd >= 0) {
		if (fstat(fd, &s1) || fstat(cd[1], &s2) || s1.st_ino != s2.st_ino)
			zdtm_fail("the socket in flight in its own queue is another socket");
		close(fd);
	}
	zdtm_pass_or_fail();
}

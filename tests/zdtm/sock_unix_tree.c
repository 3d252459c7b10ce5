/*
 * sock_unix_tree: unix connections between two processes of a tree, and a
 * socketpair both processes share (fork), with data queued everywhere.
 *
 * The root makes a stream pair P, a datagram pair Q and a seqpacket pair R,
 * forks a child that keeps one end of each (the root keeps the other), and a
 * stream pair S whose two ends both processes keep.  Queued before READY:
 *   P: root -> child 5000 bytes, child -> root 3000 bytes;
 *   Q: root -> child two datagrams, child -> root one;
 *   R: child -> root two records;
 *   S: "shared" from one end to the other.
 * On SIGTERM the root tells the child to check (SIGTERM); each reads what was
 * queued for it, exactly, then nothing more, and each sends one more message
 * to the other, which must arrive.  The root then reads S.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static uint8_t buf[16384], want[16384];

static void pair(int type, int fds[2])
{
	if (socketpair(AF_UNIX, type, 0, fds))
		zdtm_die("socketpair: %m");
}

static void put(int fd, const uint8_t *p, size_t n)
{
	if (send(fd, p, n, MSG_NOSIGNAL) != (ssize_t)n)
		zdtm_die("send: %m");
}

static void put_pattern(int fd, size_t n, uint64_t seed)
{
	zdtm_fill(buf, n, seed);
	put(fd, buf, n);
}

/* Reads one message (or, for a stream, n bytes) and compares it. */
static void expect(const char *what, int fd, int stream, size_t n, uint64_t seed)
{
	size_t got = 0;
	ssize_t r;

	zdtm_fill(want, n, seed);
	do {
		r = recv(fd, buf + got, stream ? n - got : sizeof(buf), MSG_DONTWAIT);
		if (r > 0)
			got += r;
	} while (stream && r > 0 && got < n);
	if (got != n || memcmp(buf, want, n))
		zdtm_fail("%s: %zu bytes (errno %d), expected %zu", what, got, r < 0 ? errno : 0, n);
}

static void expect_empty(const char *what, int fd)
{
	if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) != -1 || errno != EAGAIN)
		zdtm_fail("%s: more than was sent", what);
}

int main(int argc, char **argv)
{
	int p[2], q[2], r[2], s[2];
	pid_t child;

	zdtm_init(argc, argv);
	pair(SOCK_STREAM, p);
	pair(SOCK_DGRAM, q);
	pair(SOCK_SEQPACKET, r);
	pair(SOCK_STREAM, s);
	zdtm_tree_sync_init();
	child = fork();
	if (child < 0)
		zdtm_die("fork: %m");
	if (child == 0) {
		zdtm_set_role("child");
		close(p[0]);
		close(q[0]);
		close(r[0]);
		put_pattern(p[1], 3000, 2);
		put_pattern(q[1], 100, 21);
		put_pattern(r[1], 10, 31);
		put_pattern(r[1], 2000, 32);
		zdtm_tree_ready("c", 1);
		zdtm_wait_check();
		expect("P child", p[1], 1, 5000, 1);
		expect_empty("P child", p[1]);
		expect("Q child 1", q[1], 0, 700, 11);
		expect("Q child 2", q[1], 0, 1500, 12);
		expect_empty("Q child", q[1]);
		put_pattern(p[1], 10, 3);
		put_pattern(q[1], 11, 22);
		put_pattern(r[1], 12, 33);
		zdtm_child_exit();
	}
	close(p[1]);
	close(q[1]);
	close(r[1]);
	put_pattern(p[0], 5000, 1);
	put_pattern(q[0], 700, 11);
	put_pattern(q[0], 1500, 12);
	put(s[0], (const uint8_t *)"shared", 6);
	zdtm_tree_wait(buf, sizeof(buf));

	zdtm_ready();
	zdtm_wait_check();

	expect("P root", p[0], 1, 3000, 2);
	expect_empty("P root", p[0]);
	expect("Q root", q[0], 0, 100, 21);
	expect_empty("Q root", q[0]);
	expect("R root 1", r[0], 0, 10, 31);
	expect("R root 2", r[0], 0, 2000, 32);
	expect_empty("R root", r[0]);
	zdtm_stop_child(child, "child");
	/* what the child sent after its checks */
	expect("P root after", p[0], 1, 10, 3);
	expect("Q root after", q[0], 0, 11, 22);
	expect("R root after", r[0], 0, 12, 33);
	if (recv(s[1], buf, sizeof(buf), MSG_DONTWAIT) != 6 || memcmp(buf, "shared", 6))
		zdtm_fail("S: \"shared\" did not come out");
	expect_empty("S", s[1]);
	zdtm_pass_or_fail();
}

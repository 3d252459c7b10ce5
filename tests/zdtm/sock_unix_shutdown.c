/*
 * sock_unix_shutdown: unix sockets shut down in one direction, and sockets
 * whose peer was closed, with data still queued.
 *
 *   s1 (stream):    a sent "hello" to b, then shutdown(a, SHUT_WR); b sent
 *                   "reply" to a.  b reads "hello" then EOF; a reads "reply";
 *                   a cannot send (EPIPE); b can still send to a.
 *   s2 (seqpacket): b sent "m1" to a, then shutdown(a, SHUT_RD).  a reads "m1"
 *                   then EOF; b cannot send (EPIPE); a can still send to b.
 *   s3 (stream):    a sent 3000 bytes to b and was closed.  b reads them, then
 *                   EOF; b cannot send (EPIPE).
 *   s4 (datagram):  y sent "dg" to x and was closed.  x reads "dg"; its first
 *                   send fails with ECONNREFUSED (its peer is gone).
 *   s5 (seqpacket): a sent "p1", "p2" to b and was closed.  b reads both (with
 *                   their boundaries), then EOF.
 * The errors are probed before READY where probing changes nothing, and must
 * be the same after the restore.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static uint8_t buf[8192];

static void pair(int type, int *a, int *b)
{
	int fds[2];

	if (socketpair(AF_UNIX, type, 0, fds))
		zdtm_die("socketpair: %m");
	*a = fds[0];
	*b = fds[1];
}

static void put(int fd, const void *p, size_t n)
{
	if (send(fd, p, n, MSG_NOSIGNAL) != (ssize_t)n)
		zdtm_die("send: %m");
}

/* errno of a one-byte send (0 if it worked). */
static int send_errno(int fd)
{
	if (send(fd, "z", 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1)
		return 0;
	return errno;
}

static void expect(const char *what, int fd, const void *data, size_t n)
{
	ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

	if (r != (ssize_t)n || memcmp(buf, data, n))
		zdtm_fail("%s: read %zd bytes (errno %d), expected %zu", what, r, errno, n);
}

static void expect_eof(const char *what, int fd)
{
	ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

	if (r != 0)
		zdtm_fail("%s: no end-of-file: read returned %zd (errno %d)", what, r, errno);
}

int main(int argc, char **argv)
{
	int a1, b1, a2, b2, a3, b3, x4, y4, a5, b5;
	int e1, e2, e3;
	uint8_t data3[3000];

	zdtm_init(argc, argv);
	pair(SOCK_STREAM, &a1, &b1);
	put(a1, "hello", 5);
	if (shutdown(a1, SHUT_WR))
		zdtm_die("shutdown: %m");
	put(b1, "reply", 5);

	pair(SOCK_SEQPACKET, &a2, &b2);
	put(b2, "m1", 2);
	if (shutdown(a2, SHUT_RD))
		zdtm_die("shutdown: %m");

	pair(SOCK_STREAM, &a3, &b3);
	zdtm_fill(data3, sizeof(data3), 3);
	put(a3, data3, sizeof(data3));
	close(a3);

	pair(SOCK_DGRAM, &x4, &y4);
	put(y4, "dg", 2);
	close(y4);

	pair(SOCK_SEQPACKET, &a5, &b5);
	put(a5, "p1", 2);
	put(a5, "p2", 2);
	close(a5);

	e1 = send_errno(a1);
	e2 = send_errno(b2);
	e3 = send_errno(b3);
	if (e1 != EPIPE || e2 != EPIPE || e3 != EPIPE)
		zdtm_die("unexpected kernel behaviour: errno %d %d %d", e1, e2, e3);

	zdtm_ready();
	zdtm_wait_check();

	expect("s1 b", b1, "hello", 5);
	expect_eof("s1 b", b1);
	expect("s1 a", a1, "reply", 5);
	if (send_errno(a1) != e1)
		zdtm_fail("s1: a can send (errno %d)", send_errno(a1));
	if (send_errno(b1) != 0)
		zdtm_fail("s1: b cannot send to a");
	expect("s1 a after", a1, "z", 1);

	expect("s2 a", a2, "m1", 2);
	expect_eof("s2 a", a2);
	if (send_errno(b2) != e2)
		zdtm_fail("s2: b can send (errno %d)", send_errno(b2));
	if (send_errno(a2) != 0)
		zdtm_fail("s2: a cannot send to b");
	expect("s2 b after", b2, "z", 1);

	expect("s3 b", b3, data3, sizeof(data3));
	expect_eof("s3 b", b3);
	if (send_errno(b3) != e3)
		zdtm_fail("s3: b send errno %d, expected %d", send_errno(b3), e3);

	expect("s4 x", x4, "dg", 2);
	if (send_errno(x4) != ECONNREFUSED)
		zdtm_fail("s4: x's send errno %d, expected ECONNREFUSED", errno);

	expect("s5 b", b5, "p1", 2);
	expect("s5 b", b5, "p2", 2);
	expect_eof("s5 b", b5);
	zdtm_pass_or_fail();
}

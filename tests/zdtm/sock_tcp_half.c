/*
 * sock_tcp_half: TCP connections of the process with itself over loopback, half or fully
 * closed.
 *
 *   a -> b: a sends "abc" and shuts down writing: a is in FIN_WAIT2, b in CLOSE_WAIT with
 *           "abc" and the end-of-file unread.
 *   c -> d: c sends until its buffers are full, then shuts down writing: c is in FIN_WAIT1
 *           (its FIN behind data not sent), d has data unread.
 *   e, f:   both shut down writing and read the end-of-file: both are closed (state CLOSE)
 *           with their fds open.
 * On SIGTERM: b reads "abc" then end-of-file; a cannot write (EPIPE) but reads what b sends
 * now, then end-of-file once b closes; d reads all of c's data, then end-of-file; c cannot
 * write; e and f read end-of-file and cannot write.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static uint8_t buf[1 << 16];

static int state(int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l))
		return -1;
	return ti.tcpi_state;
}

static void pair(int lfd, const struct sockaddr_in *a, int *c, int *s)
{
	*c = socket(AF_INET, SOCK_STREAM, 0);
	if (*c < 0 || connect(*c, (void *)a, sizeof(*a)))
		zdtm_die("connect: %m");
	*s = accept(lfd, NULL, NULL);
	if (*s < 0)
		zdtm_die("accept: %m");
}

/* Reads until end-of-file within 5 s: the byte count, or -1. */
static ssize_t read_to_eof(int fd, uint64_t seed, const char *name)
{
	size_t got = 0;
	int64_t deadline = zdtm_now_ns() + 5000000000LL;

	fcntl(fd, F_SETFL, O_NONBLOCK);
	while (zdtm_now_ns() < deadline) {
		struct pollfd p = { fd, POLLIN, 0 };
		poll(&p, 1, 100);
		ssize_t r = read(fd, buf, sizeof(buf));
		if (r == 0)
			return got;
		if (r < 0) {
			if (errno == EAGAIN)
				continue;
			zdtm_fail("%s: read: %m", name);
			return -1;
		}
		for (ssize_t i = 0; seed && i < r; i++)
			if (buf[i] != zdtm_pattern_byte(seed, got + i)) {
				zdtm_fail("%s: byte %zu differs", name, got + i);
				return -1;
			}
		got += r;
	}
	zdtm_fail("%s: no end-of-file after %zu bytes", name, got);
	return -1;
}

static void cannot_write(int fd, const char *name)
{
	if (send(fd, "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
		zdtm_fail("%s: a write did not fail with EPIPE", name);
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t l = sizeof(a);
	int lfd, ca, sb, cc, sd, ce, sf;
	size_t c2d = 0;

	zdtm_init(argc, argv);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (void *)&a, sizeof(a)) || listen(lfd, 8) ||
	    getsockname(lfd, (void *)&a, &l))
		zdtm_die("listener: %m");
	pair(lfd, &a, &ca, &sb);
	pair(lfd, &a, &cc, &sd);
	pair(lfd, &a, &ce, &sf);
	close(lfd);

	if (write(ca, "abc", 3) != 3 || shutdown(ca, SHUT_WR))
		zdtm_die("a: %m");

	fcntl(cc, F_SETFL, O_NONBLOCK);
	for (int tries = 0; tries < 20; tries++) {
		for (;;) {
			for (size_t i = 0; i < sizeof(buf); i++)
				buf[i] = zdtm_pattern_byte(3, c2d + i);
			ssize_t w = write(cc, buf, sizeof(buf));
			if (w < 0 && errno == EAGAIN)
				break;
			if (w <= 0)
				zdtm_die("c: write: %m");
			c2d += w;
		}
		usleep(10000);
	}
	if (shutdown(cc, SHUT_WR))
		zdtm_die("c: shutdown: %m");

	if (shutdown(ce, SHUT_WR) || shutdown(sf, SHUT_WR))
		zdtm_die("e/f: shutdown: %m");
	for (int i = 0; i < 200 && (state(ca) != TCP_FIN_WAIT2 || state(sb) != TCP_CLOSE_WAIT ||
				   state(cc) != TCP_FIN_WAIT1 || state(ce) != TCP_CLOSE ||
				   state(sf) != TCP_CLOSE); i++)
		usleep(10000);
	if (state(ca) != TCP_FIN_WAIT2 || state(sb) != TCP_CLOSE_WAIT || state(cc) != TCP_FIN_WAIT1 ||
	    state(ce) != TCP_CLOSE || state(sf) != TCP_CLOSE)
		zdtm_die("states %d %d %d %d %d", state(ca), state(sb), state(cc), state(ce),
			 state(sf));
	zdtm_print("%zu bytes c -> d\n", c2d);

	zdtm_ready();
	zdtm_wait_check();

	/* b: "abc", then end-of-file */
	if (read_to_eof(sb, 0, "b") != 3 || memcmp(buf, "abc", 3))
		zdtm_fail("b: not \"abc\" then end-of-file");
	cannot_write(ca, "a");
	if (write(sb, "zz", 2) != 2)
		zdtm_fail("b: write: %m");
	close(sb);
	if (read_to_eof(ca, 0, "a") != 2 || memcmp(buf, "zz", 2))
		zdtm_fail("a: not \"zz\" then end-of-file");

	ssize_t got = read_to_eof(sd, 3, "d");
	if (got != (ssize_t)c2d)
		zdtm_fail("d: %zd bytes, expected %zu", got, c2d);
	cannot_write(cc, "c");

	if (read_to_eof(ce, 0, "e") != 0 || read_to_eof(sf, 0, "f") != 0)
		zdtm_fail("e/f: data instead of end-of-file");
	cannot_write(ce, "e");
	cannot_write(sf, "f");
	zdtm_pass_or_fail();
}

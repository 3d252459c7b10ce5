/*
 * sock_tcp_loop: a TCP connection of the process to itself over loopback, with data in
 * flight both ways.
 *
 *   A listener on 127.0.0.1 (ephemeral port, SO_REUSEADDR, backlog 7) stays open.
 *   client -> server: written (non-blocking) until the send buffer is full: the server's
 *     receive queue holds unread data, the client's send queue data not acknowledged and
 *     data not sent yet.  Nothing of it is read before READY.
 *   server -> client: 3000 bytes, of which the client reads the first 1000 before READY.
 *   Options: TCP_NODELAY on the client, SO_KEEPALIVE and TCP_KEEPIDLE 77 on the server.
 * With argument "6": the same over IPv6 (::1); with "mapped": an IPv6 listener on [::]
 * (IPV6_V6ONLY 0) and an IPv4 client, so the server end is AF_INET6 with v4-mapped
 * addresses.
 * On SIGTERM: addresses and options unchanged; both sides shut down their write side and
 * read until EOF: every byte of both streams must come out exactly once, in order
 * (a pattern of its offset), and nothing more; then the listener accepts a new connection.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define S2C 3000
#define S2C_READ 1000
#define MAXC2S (64 << 20)

static uint8_t buf[1 << 16];

static int getint(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);

	if (getsockopt(fd, level, name, &v, &l))
		return -1;
	return v;
}

struct stream {
	const char *name;
	int fd;
	uint64_t seed;
	size_t got, want;
	int eof;
};

static void drain(struct stream *s)
{
	ssize_t r = read(s->fd, buf, sizeof(buf));

	if (r == 0) {
		s->eof = 1;
		return;
	}
	if (r < 0) {
		if (errno != EAGAIN)
			zdtm_fail("%s: read: %m", s->name);
		if (errno != EAGAIN)
			s->eof = 1;
		return;
	}
	for (ssize_t i = 0; i < r; i++)
		if (buf[i] != zdtm_pattern_byte(s->seed, s->got + i)) {
			zdtm_fail("%s: byte %zu differs", s->name, s->got + i);
			s->eof = 1;
			return;
		}
	s->got += r;
}

int main(int argc, char **argv)
{
	struct sockaddr_storage a, ca, sa, sl, ca2, sa2;
	struct sockaddr_in *a4 = (void *)&a;
	struct sockaddr_in6 *a6 = (void *)&a;
	socklen_t l = sizeof(a), alen;
	int lfd, c, s, one = 1, zero = 0, idle = 77;
	int lfam = AF_INET, cfam = AF_INET;
	size_t c2s = 0, s2c = 0;

	zdtm_init(argc, argv);
	memset(&a, 0, sizeof(a));
	memset(&ca, 0, sizeof(ca));
	memset(&sa, 0, sizeof(sa));
	memset(&sl, 0, sizeof(sl));
	memset(&ca2, 0, sizeof(ca2));
	memset(&sa2, 0, sizeof(sa2));
	if (argc > 1 && !strcmp(argv[1], "6")) {
		lfam = cfam = AF_INET6;
		a6->sin6_family = AF_INET6;
		a6->sin6_addr = in6addr_loopback;
		alen = sizeof(*a6);
	} else if (argc > 1 && !strcmp(argv[1], "mapped")) {
		lfam = AF_INET6;
		a6->sin6_family = AF_INET6;
		a6->sin6_addr = in6addr_any;
		alen = sizeof(*a6);
	} else {
		a4->sin_family = AF_INET;
		a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		alen = sizeof(*a4);
	}
	lfd = socket(lfam, SOCK_STREAM, 0);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    (lfam == AF_INET6 && setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero))) ||
	    bind(lfd, (void *)&a, alen) || listen(lfd, 7) || getsockname(lfd, (void *)&a, &l))
		zdtm_die("listener: %m");
	if (lfam != cfam) {
		/* connect to 127.0.0.1 on the listener's port */
		int port = a6->sin6_port;
		memset(&a, 0, sizeof(a));
		a4->sin_family = AF_INET;
		a4->sin_port = port;
		a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		alen = sizeof(*a4);
	}
	c = socket(cfam, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (void *)&a, alen))
		zdtm_die("connect: %m");
	s = accept(lfd, NULL, NULL);
	if (s < 0)
		zdtm_die("accept: %m");
	if (setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) ||
	    setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) ||
	    setsockopt(s, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)))
		zdtm_die("setsockopt: %m");
	fcntl(c, F_SETFL, O_NONBLOCK);
	fcntl(s, F_SETFL, O_NONBLOCK);

	/* server -> client */
	while (s2c < S2C) {
		size_t n = S2C - s2c;

		for (size_t i = 0; i < n; i++)
			buf[i] = zdtm_pattern_byte(2, s2c + i);
		ssize_t w = write(s, buf, n);
		if (w <= 0)
			zdtm_die("write server: %m");
		s2c += w;
	}
	/* client reads the first S2C_READ bytes */
	struct stream cs = { "server->client", c, 2, 0, S2C, 0 };
	for (int i = 0; cs.got < S2C_READ && i < 1000; i++) {
		struct pollfd p = { c, POLLIN, 0 };
		poll(&p, 1, 10);
		ssize_t r = read(c, buf, S2C_READ - cs.got);
		if (r > 0) {
			for (ssize_t k = 0; k < r; k++)
				if (buf[k] != zdtm_pattern_byte(2, cs.got + k))
					zdtm_die("early read differs");
			cs.got += r;
		}
	}
	if (cs.got != S2C_READ)
		zdtm_die("client read %zu bytes before READY", cs.got);

	/* client -> server until full (a few tries: the receiver's window fills in steps) */
	for (int tries = 0; tries < 20 && c2s < MAXC2S; tries++) {
		for (;;) {
			for (size_t i = 0; i < sizeof(buf); i++)
				buf[i] = zdtm_pattern_byte(1, c2s + i);
			ssize_t w = write(c, buf, sizeof(buf));
			if (w < 0 && errno == EAGAIN)
				break;
			if (w <= 0)
				zdtm_die("write client: %m");
			c2s += w;
		}
		usleep(10000);
	}
	int unsent = 0;
	ioctl(c, SIOCOUTQNSD, &unsent);
	l = sizeof(ca);
	getsockname(c, (void *)&ca, &l);
	l = sizeof(sa);
	getpeername(c, (void *)&sa, &l);
	l = sizeof(sl);
	getsockname(s, (void *)&sl, &l);

	zdtm_ready();
	zdtm_wait_check();

	zdtm_print("%zu bytes client->server (%d not sent at READY)\n", c2s, unsent);
	l = sizeof(ca2);
	getsockname(c, (void *)&ca2, &l);
	l = sizeof(sa2);
	getpeername(c, (void *)&sa2, &l);
	if (memcmp(&ca, &ca2, sizeof(ca)) || memcmp(&sa, &sa2, sizeof(sa)))
		zdtm_fail("the client's addresses changed");
	memset(&sa2, 0, sizeof(sa2));
	l = sizeof(sa2);
	getsockname(s, (void *)&sa2, &l);
	if (memcmp(&sl, &sa2, sizeof(sl)))
		zdtm_fail("the server's address changed");
	if (getint(c, IPPROTO_TCP, TCP_NODELAY) != 1)
		zdtm_fail("TCP_NODELAY lost");
	if (getint(s, SOL_SOCKET, SO_KEEPALIVE) != 1 || getint(s, IPPROTO_TCP, TCP_KEEPIDLE) != 77)
		zdtm_fail("keepalive options lost");
	if (getint(lfd, SOL_SOCKET, SO_REUSEADDR) != 1)
		zdtm_fail("SO_REUSEADDR of the listener lost");
	if (getint(c, SOL_SOCKET, SO_ERROR) != 0 || getint(s, SOL_SOCKET, SO_ERROR) != 0)
		zdtm_fail("a socket has an error");

	if (shutdown(c, SHUT_WR) || shutdown(s, SHUT_WR))
		zdtm_fail("shutdown: %m");
	struct stream ss = { "client->server", s, 1, 0, c2s, 0 };
	int64_t deadline = zdtm_now_ns() + 8000000000LL;
	while ((!cs.eof || !ss.eof) && zdtm_now_ns() < deadline) {
		struct pollfd p[2] = { { c, POLLIN, 0 }, { s, POLLIN, 0 } };
		poll(p, 2, 100);
		if (!cs.eof)
			drain(&cs);
		if (!ss.eof)
			drain(&ss);
	}
	if (!cs.eof || !ss.eof)
		zdtm_fail("no EOF after 8 s: %zu/%zu and %zu/%zu bytes", cs.got, cs.want, ss.got,
			  ss.want);
	if (cs.got != cs.want)
		zdtm_fail("server->client: %zu bytes, expected %zu", cs.got, cs.want);
	if (ss.got != ss.want)
		zdtm_fail("client->server: %zu bytes, expected %zu", ss.got, ss.want);
	close(c);
	close(s);

	/* the listener still works */
	c = socket(cfam, SOCK_STREAM, 0);
	if (connect(c, (void *)&a, alen))
		zdtm_fail("connect to the restored listener: %m");
	else if ((s = accept(lfd, NULL, NULL)) < 0)
		zdtm_fail("accept: %m");
	else
		close(s);
	close(c);
	close(lfd);
	zdtm_pass_or_fail();
}

/*
 * sock_udp: UDP and UDP-Lite sockets with datagrams queued.
 *
 *   u1:   AF_INET UDP bound to 127.0.0.1 (ephemeral), SO_BROADCAST; 3 datagrams queued
 *         (one empty, one of 60000 bytes), sent by u2
 *   u2:   AF_INET UDP bound to 127.0.0.1, connected to u1
 *   u6:   AF_INET6 UDP bound to [::1], connected to u6p, 2 datagrams queued from u6p
 *   u6p:  AF_INET6 UDP bound to [::1]
 *   lite: AF_INET UDP-Lite bound to 127.0.0.1, 1 datagram queued (sent to itself)
 *   shut: AF_INET UDP connected to u1, shut down for writing
 *   none: AF_INET6 UDP, unbound
 * On SIGTERM: addresses, peers, protocols as before; every queued datagram comes out once, in
 * order, with its contents (those of u1 and u6 from their senders' addresses: u2 and u6p are
 * restored after them, so the addresses are free then), then EAGAIN; u2 -> u1 and u6p -> u6 still work; shut refuses to
 * send (EPIPE); none is unbound.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif

static uint8_t big[60000], buf[65536];

static int udp(int family, int proto, const char *addr, struct sockaddr_storage *ss)
{
	int fd = socket(family, SOCK_DGRAM, proto);
	socklen_t l = sizeof(*ss);

	if (fd < 0)
		zdtm_die("socket: %m");
	memset(ss, 0, sizeof(*ss));
	if (!addr)
		return fd;
	if (family == AF_INET) {
		struct sockaddr_in *a = (void *)ss;
		a->sin_family = AF_INET;
		inet_pton(AF_INET, addr, &a->sin_addr);
	} else {
		struct sockaddr_in6 *a = (void *)ss;
		a->sin6_family = AF_INET6;
		inet_pton(AF_INET6, addr, &a->sin6_addr);
	}
	if (bind(fd, (void *)ss, sizeof(*ss)) || getsockname(fd, (void *)ss, &l))
		zdtm_die("bind %s: %m", addr);
	return fd;
}

static void same_name(const char *name, int fd, const struct sockaddr_storage *want, int peer)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);

	memset(&ss, 0, sizeof(ss));
	if ((peer ? getpeername(fd, (void *)&ss, &l) : getsockname(fd, (void *)&ss, &l)) ||
	    memcmp(&ss, want, sizeof(ss)))
		zdtm_fail("%s: %s address changed", name, peer ? "peer" : "local");
}

/* The next datagram on fd must be `data`, from `from` when given. */
static void expect_from(const char *name, int fd, const void *data, size_t len,
			const struct sockaddr_storage *from)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);

	memset(&ss, 0, sizeof(ss));
	ssize_t n = recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, (void *)&ss, &l);

	if (n < 0)
		zdtm_fail("%s: no datagram of %zu bytes: %m", name, len);
	else if ((size_t)n != len || memcmp(buf, data, len))
		zdtm_fail("%s: a datagram of %zd bytes, expected %zu", name, n, len);
	else if (from && memcmp(&ss, from, sizeof(ss)))
		zdtm_fail("%s: a datagram of %zu bytes from another sender", name, len);
}

static void expect(const char *name, int fd, const void *data, size_t len)
{
	expect_from(name, fd, data, len, NULL);
}

static void expect_empty(const char *name, int fd)
{
	if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) != -1 || errno != EAGAIN)
		zdtm_fail("%s: more datagrams than expected", name);
}

int main(int argc, char **argv)
{
	struct sockaddr_storage a1, a2, a6, a6p, al, as, an;
	int one = 1, u1, u2, u6, u6p, lite, shut, none;

	zdtm_init(argc, argv);
	zdtm_fill(big, sizeof(big), 5);
	u1 = udp(AF_INET, 0, "127.0.0.1", &a1);
	setsockopt(u1, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one));
	u2 = udp(AF_INET, 0, "127.0.0.1", &a2);
	if (connect(u2, (void *)&a1, sizeof(a1)))
		zdtm_die("connect u2: %m");
	if (send(u2, "first", 5, 0) != 5 || send(u2, "", 0, 0) != 0 ||
	    send(u2, big, sizeof(big), 0) != sizeof(big))
		zdtm_die("send u2: %m");
	u6 = udp(AF_INET6, 0, "::1", &a6);
	u6p = udp(AF_INET6, 0, "::1", &a6p);
	if (connect(u6, (void *)&a6p, sizeof(a6p)) ||
	    sendto(u6p, "six-1", 5, 0, (void *)&a6, sizeof(a6)) != 5 ||
	    sendto(u6p, "six-2", 5, 0, (void *)&a6, sizeof(a6)) != 5)
		zdtm_die("u6: %m");
	lite = udp(AF_INET, IPPROTO_UDPLITE, "127.0.0.1", &al);
	if (sendto(lite, "lite", 4, 0, (void *)&al, sizeof(al)) != 4)
		zdtm_die("lite: %m");
	shut = udp(AF_INET, 0, "127.0.0.1", &as);
	if (connect(shut, (void *)&a1, sizeof(a1)) || shutdown(shut, SHUT_WR))
		zdtm_die("shut: %m");
	none = udp(AF_INET6, 0, NULL, &an);
	usleep(100000);

	zdtm_ready();
	zdtm_wait_check();

	same_name("u1", u1, &a1, 0);
	same_name("u2", u2, &a2, 0);
	same_name("u2", u2, &a1, 1);
	same_name("u6", u6, &a6, 0);
	same_name("u6", u6, &a6p, 1);
	same_name("lite", lite, &al, 0);
	same_name("shut", shut, &a1, 1);
	{
		struct sockaddr_storage ss;
		socklen_t l = sizeof(ss);
		if (getpeername(u1, (void *)&ss, &l) == 0 || errno != ENOTCONN)
			zdtm_fail("u1 is connected");
	}
	int v = 0;
	socklen_t l = sizeof(v);
	if (getsockopt(u1, SOL_SOCKET, SO_BROADCAST, &v, &l) || v != 1)
		zdtm_fail("u1: SO_BROADCAST lost");
	l = sizeof(v);
	if (getsockopt(lite, SOL_SOCKET, SO_PROTOCOL, &v, &l) || v != IPPROTO_UDPLITE)
		zdtm_fail("lite: protocol %d", v);

	expect_from("u1", u1, "first", 5, &a2);
	expect_from("u1", u1, "", 0, &a2);
	expect_from("u1", u1, big, sizeof(big), &a2);
	expect_empty("u1", u1);
	expect_from("u6", u6, "six-1", 5, &a6p);
	expect_from("u6", u6, "six-2", 5, &a6p);
	expect_empty("u6", u6);
	expect("lite", lite, "lite", 4);
	expect_empty("lite", lite);
	expect_empty("u2", u2);

	if (send(u2, "after", 5, 0) != 5)
		zdtm_fail("u2: send: %m");
	if (sendto(u6p, "after", 5, 0, (void *)&a6, sizeof(a6)) != 5)
		zdtm_fail("u6p: send: %m");
	usleep(100000);
	expect("u1 after", u1, "after", 5);
	expect("u6 after", u6, "after", 5);
	if (send(shut, "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
		zdtm_fail("shut: send did not fail with EPIPE");
	{
		struct sockaddr_in6 x;
		socklen_t xl = sizeof(x);
		if (getsockname(none, (void *)&x, &xl) || x.sin6_port != 0)
			zdtm_fail("none: bound");
	}
	zdtm_pass_or_fail();
}

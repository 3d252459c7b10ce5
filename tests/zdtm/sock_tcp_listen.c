/*
 * sock_tcp_listen: TCP sockets that are not connected.
 *
 *   l4:     AF_INET listener on 127.0.0.1 (ephemeral port), SO_REUSEADDR, backlog 5
 *   l6:     AF_INET6 listener on [::] with IPV6_V6ONLY 0 (takes IPv4 too), backlog 9
 *   l6only: AF_INET6 listener on [::1] with IPV6_V6ONLY 1 and SO_REUSEPORT, backlog 3
 *   bound:  AF_INET socket bound to 127.0.0.1 (ephemeral port), not listening
 *   unbound: AF_INET6 socket, nothing done
 * On SIGTERM: every address, option and backlog (TCP_INFO of a listener reports it) as before;
 * each listener accepts a connection (l6 also one over IPv4, v4-mapped); the bound socket is not listening and can still listen; the unbound one is
 * still unbound.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int getint(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);

	if (getsockopt(fd, level, name, &v, &l))
		return -1;
	return v;
}

static int backlog(int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l))
		return -1;
	return ti.tcpi_state == TCP_LISTEN ? (int)ti.tcpi_sacked : -2;
}

static void try_accept(const char *name, int lfd, int family, const void *addr, socklen_t alen)
{
	int c = socket(family, SOCK_STREAM, 0), s;

	if (connect(c, addr, alen)) {
		zdtm_fail("%s: connect: %m", name);
	} else if ((s = accept(lfd, NULL, NULL)) < 0) {
		zdtm_fail("%s: accept: %m", name);
	} else {
		if (write(c, "x", 1) != 1)
			zdtm_fail("%s: write: %m", name);
		char b;
		if (read(s, &b, 1) != 1 || b != 'x')
			zdtm_fail("%s: the accepted connection does not carry data", name);
		/* The client closes first: its end, not the listener's port, lingers in
		 * TIME_WAIT (which would keep a next copy from binding the port). */
		close(c);
		c = -1;
		if (read(s, &b, 1) != 0)
			zdtm_fail("%s: no EOF on the accepted connection", name);
		close(s);
	}
	if (c >= 0)
		close(c);
}

int main(int argc, char **argv)
{
	struct sockaddr_in a4 = { .sin_family = AF_INET }, b4 = { .sin_family = AF_INET }, x4;
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6 }, o6 = { .sin6_family = AF_INET6 }, x6;
	int one = 1, zero = 0, l4, l6, l6only, bound, unbound;
	socklen_t l;

	zdtm_init(argc, argv);
	a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	b4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	o6.sin6_addr = in6addr_loopback;

	l4 = socket(AF_INET, SOCK_STREAM, 0);
	l = sizeof(a4);
	if (setsockopt(l4, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(l4, (void *)&a4, sizeof(a4)) || listen(l4, 5) || getsockname(l4, (void *)&a4, &l))
		zdtm_die("l4: %m");
	l6 = socket(AF_INET6, SOCK_STREAM, 0);
	l = sizeof(a6);
	if (setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) ||
	    bind(l6, (void *)&a6, sizeof(a6)) || listen(l6, 9) || getsockname(l6, (void *)&a6, &l))
		zdtm_die("l6: %m");
	l6only = socket(AF_INET6, SOCK_STREAM, 0);
	l = sizeof(o6);
	if (setsockopt(l6only, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) ||
	    setsockopt(l6only, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) ||
	    bind(l6only, (void *)&o6, sizeof(o6)) || listen(l6only, 3) ||
	    getsockname(l6only, (void *)&o6, &l))
		zdtm_die("l6only: %m");
	bound = socket(AF_INET, SOCK_STREAM, 0);
	l = sizeof(b4);
	if (bind(bound, (void *)&b4, sizeof(b4)) || getsockname(bound, (void *)&b4, &l))
		zdtm_die("bound: %m");
	unbound = socket(AF_INET6, SOCK_STREAM, 0);
	if (unbound < 0)
		zdtm_die("unbound: %m");

	zdtm_ready();
	zdtm_wait_check();

	l = sizeof(x4);
	if (getsockname(l4, (void *)&x4, &l) || memcmp(&x4, &a4, sizeof(a4)))
		zdtm_fail("l4: address changed");
	if (getint(l4, SOL_SOCKET, SO_REUSEADDR) != 1)
		zdtm_fail("l4: SO_REUSEADDR lost");
	if (backlog(l4) != 5)
		zdtm_fail("l4: backlog %d, expected 5", backlog(l4));
	try_accept("l4", l4, AF_INET, &a4, sizeof(a4));

	l = sizeof(x6);
	if (getsockname(l6, (void *)&x6, &l) || memcmp(&x6, &a6, sizeof(a6)))
		zdtm_fail("l6: address changed");
	if (getint(l6, IPPROTO_IPV6, IPV6_V6ONLY) != 0)
		zdtm_fail("l6: IPV6_V6ONLY is set");
	if (backlog(l6) != 9)
		zdtm_fail("l6: backlog %d, expected 9", backlog(l6));
	struct sockaddr_in6 lo6 = a6;
	lo6.sin6_addr = in6addr_loopback;
	try_accept("l6 over IPv6", l6, AF_INET6, &lo6, sizeof(lo6));
	struct sockaddr_in via4 = { .sin_family = AF_INET, .sin_port = a6.sin6_port };
	via4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	try_accept("l6 over IPv4 (v4-mapped)", l6, AF_INET, &via4, sizeof(via4));

	l = sizeof(x6);
	if (getsockname(l6only, (void *)&x6, &l) || memcmp(&x6, &o6, sizeof(o6)))
		zdtm_fail("l6only: address changed");
	if (getint(l6only, IPPROTO_IPV6, IPV6_V6ONLY) != 1)
		zdtm_fail("l6only: IPV6_V6ONLY lost");
	if (getint(l6only, SOL_SOCKET, SO_REUSEPORT) != 1)
		zdtm_fail("l6only: SO_REUSEPORT lost");
	if (backlog(l6only) != 3)
		zdtm_fail("l6only: backlog %d, expected 3", backlog(l6only));
	try_accept("l6only", l6only, AF_INET6, &o6, sizeof(o6));

	l = sizeof(x4);
	if (getsockname(bound, (void *)&x4, &l) || memcmp(&x4, &b4, sizeof(b4)))
		zdtm_fail("bound: address changed");
	if (getint(bound, SOL_SOCKET, SO_ACCEPTCONN) != 0)
		zdtm_fail("bound: listening");
	if (listen(bound, 1))
		zdtm_fail("bound: listen: %m");
	else
		try_accept("bound", bound, AF_INET, &b4, sizeof(b4));

	l = sizeof(x6);
	if (getsockname(unbound, (void *)&x6, &l) || x6.sin6_port != 0 ||
	    getint(unbound, SOL_SOCKET, SO_DOMAIN) != AF_INET6)
		zdtm_fail("unbound: bound or of another family");

	zdtm_pass_or_fail();
}

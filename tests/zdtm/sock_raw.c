/*
 * sock_raw: raw inet sockets.
 *
 *   icmp:  AF_INET SOCK_RAW IPPROTO_ICMP bound to 127.77.X.Y (from the pid: other copies of
 *          the test ping too, and a raw socket gets the replies to its address only),
 *          ICMP_FILTER passing echo replies only, IP_TTL 17
 *   hdr:   AF_INET SOCK_RAW protocol 253 (reserved for experiments: nothing sends it) with
 *          IP_HDRINCL (not connected: a raw socket's peer does not show in getpeername, so
 *          stasis cannot see it)
 *   icmp6: AF_INET6 SOCK_RAW IPPROTO_ICMPV6 with an ICMP6_FILTER passing echo replies only
 * On SIGTERM: protocols, addresses and options as before; icmp sends an echo request to
 * its own address and reads the reply (with the identifier it sent).
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef ICMP_FILTER
#define ICMP_FILTER 1
#endif
#ifndef SOL_RAW
#define SOL_RAW 255
#endif

static int getint(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);

	if (getsockopt(fd, level, name, &v, &l))
		return -1;
	return v;
}

static uint16_t csum(const void *p, size_t n)
{
	const uint16_t *w = p;
	uint32_t s = 0;

	for (; n > 1; n -= 2)
		s += *w++;
	if (n)
		s += *(const uint8_t *)w;
	s = (s >> 16) + (s & 0xffff);
	s += s >> 16;
	return ~s;
}

int main(int argc, char **argv)
{
	struct sockaddr_in lo = { .sin_family = AF_INET }, a, x;
	socklen_t l;
	int one = 1, ttl = 17, icmp, hdr, icmp6;
	uint32_t filt = ~(1u << ICMP_ECHOREPLY), got_filt = 0;
	struct icmp6_filter f6, got6;

	zdtm_init(argc, argv);
	lo.sin_addr.s_addr = htonl(0x7f4d0000 | (getpid() & 0xfffe) | 1);
	icmp = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	l = sizeof(a);
	if (icmp < 0 || setsockopt(icmp, SOL_RAW, ICMP_FILTER, &filt, sizeof(filt)) ||
	    setsockopt(icmp, IPPROTO_IP, IP_TTL, &ttl, sizeof(ttl)) ||
	    bind(icmp, (void *)&lo, sizeof(lo)) || getsockname(icmp, (void *)&a, &l))
		zdtm_die("icmp: %m");
	hdr = socket(AF_INET, SOCK_RAW, 253);
	if (hdr < 0 || setsockopt(hdr, IPPROTO_IP, IP_HDRINCL, &one, sizeof(one)))
		zdtm_die("hdr: %m");
	icmp6 = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
	ICMP6_FILTER_SETBLOCKALL(&f6);
	ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f6);
	if (icmp6 < 0 || setsockopt(icmp6, IPPROTO_ICMPV6, ICMP6_FILTER, &f6, sizeof(f6)))
		zdtm_die("icmp6: %m");

	zdtm_ready();
	zdtm_wait_check();

	if (getint(icmp, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_ICMP ||
	    getint(icmp, SOL_SOCKET, SO_TYPE) != SOCK_RAW)
		zdtm_fail("icmp: not a raw ICMP socket");
	l = sizeof(x);
	memset(&x, 0, sizeof(x));
	if (getsockname(icmp, (void *)&x, &l) || x.sin_addr.s_addr != a.sin_addr.s_addr)
		zdtm_fail("icmp: address changed");
	if (getint(icmp, IPPROTO_IP, IP_TTL) != 17)
		zdtm_fail("icmp: IP_TTL %d", getint(icmp, IPPROTO_IP, IP_TTL));
	l = sizeof(got_filt);
	if (getsockopt(icmp, SOL_RAW, ICMP_FILTER, &got_filt, &l) || got_filt != filt)
		zdtm_fail("icmp: ICMP_FILTER %#x, expected %#x", got_filt, filt);
	if (getint(hdr, SOL_SOCKET, SO_PROTOCOL) != 253 || getint(hdr, IPPROTO_IP, IP_HDRINCL) != 1)
		zdtm_fail("hdr: protocol or IP_HDRINCL lost");
	l = sizeof(got6);
	if (getsockopt(icmp6, IPPROTO_ICMPV6, ICMP6_FILTER, &got6, &l) ||
	    memcmp(&got6, &f6, sizeof(f6)))
		zdtm_fail("icmp6: ICMP6_FILTER lost");

	/* an echo request to 127.0.0.1 and its reply */
	struct icmphdr req = { .type = ICMP_ECHO };
	req.un.echo.id = htons(getpid() & 0xffff);
	req.un.echo.sequence = htons(1);
	req.checksum = csum(&req, sizeof(req));
	if (sendto(icmp, &req, sizeof(req), 0, (void *)&lo, sizeof(lo)) != sizeof(req))
		zdtm_fail("icmp: sendto: %m");
	int ok = 0;
	int64_t deadline = zdtm_now_ns() + 2000000000LL;
	while (!ok && zdtm_now_ns() < deadline) {
		struct pollfd p = { icmp, POLLIN, 0 };
		uint8_t buf[256];
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = recv(icmp, buf, sizeof(buf), 0);
		if (n < (ssize_t)(sizeof(struct iphdr) + sizeof(struct icmphdr)))
			continue;
		struct icmphdr *rep = (void *)(buf + ((struct iphdr *)buf)->ihl * 4);
		if (rep->type == ICMP_ECHOREPLY && rep->un.echo.id == req.un.echo.id)
			ok = 1;
	}
	if (!ok)
		zdtm_fail("icmp: no echo reply");
	zdtm_pass_or_fail();
}

/*
 * sock_udp_mcast: multicast memberships of UDP sockets on lo.
 *
 *   A  bound to 127.0.0.1-less INADDR_ANY:port, joined 239.255.11.22 (IP_ADD_MEMBERSHIP)
 *   B  joined 239.255.11.23 with a source filter: only 127.0.0.1 (IP_ADD_SOURCE_MEMBERSHIP)
 *   C  joined nothing
 * On SIGTERM getsourcefilter shows the same memberships and filters (A: exclude nothing,
 * B: include 127.0.0.1; A is no member of B's group, C of none), and a datagram sent to A's
 * group on lo (IP_MULTICAST_IF lo) reaches A.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int member(int s, unsigned ifindex, const char *group, uint32_t *fmode, uint32_t *nsrc,
		  struct sockaddr_storage *src)
{
	struct sockaddr_in g = { .sin_family = AF_INET };

	inet_pton(AF_INET, group, &g.sin_addr);
	*nsrc = 4;
	return getsourcefilter(s, ifindex, (struct sockaddr *)&g, sizeof(g), fmode, nsrc, src) == 0;
}

int main(int argc, char **argv)
{
	int a, b, c, out;
	unsigned lo = if_nametoindex("lo");
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t len = sizeof(addr);
	struct ip_mreqn mreq = { .imr_ifindex = (int)lo };
	struct ip_mreq_source smreq;
	struct sockaddr_storage src[4];
	uint32_t fmode, nsrc;
	char buf[64];
	struct pollfd p;

	zdtm_init(argc, argv);
	a = socket(AF_INET, SOCK_DGRAM, 0);
	b = socket(AF_INET, SOCK_DGRAM, 0);
	c = socket(AF_INET, SOCK_DGRAM, 0);
	if (a < 0 || b < 0 || c < 0 || bind(a, (struct sockaddr *)&addr, sizeof(addr)) ||
	    getsockname(a, (struct sockaddr *)&addr, &len))
		zdtm_die("socket");
	inet_pton(AF_INET, "239.255.11.22", &mreq.imr_multiaddr);
	if (setsockopt(a, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof(mreq)))
		zdtm_die("IP_ADD_MEMBERSHIP: %m");
	memset(&smreq, 0, sizeof(smreq));
	inet_pton(AF_INET, "239.255.11.23", &smreq.imr_multiaddr);
	inet_pton(AF_INET, "127.0.0.1", &smreq.imr_interface);
	inet_pton(AF_INET, "127.0.0.1", &smreq.imr_sourceaddr);
	if (setsockopt(b, IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, &smreq, sizeof(smreq)))
		zdtm_die("IP_ADD_SOURCE_MEMBERSHIP: %m");
	zdtm_ready();
	zdtm_wait_check();

	if (!member(a, lo, "239.255.11.22", &fmode, &nsrc, src) || fmode != MCAST_EXCLUDE || nsrc)
		zdtm_fail("A is not a member of 239.255.11.22 excluding nothing");
	if (member(a, lo, "239.255.11.23", &fmode, &nsrc, src))
		zdtm_fail("A is a member of B's group");
	if (!member(b, lo, "239.255.11.23", &fmode, &nsrc, src) || fmode != MCAST_INCLUDE ||
	    nsrc != 1 ||
	    ((struct sockaddr_in *)&src[0])->sin_addr.s_addr != htonl(INADDR_LOOPBACK))
		zdtm_fail("B's filter is not include 127.0.0.1");
	if (member(c, lo, "239.255.11.22", &fmode, &nsrc, src))
		zdtm_fail("C is a member");

	out = socket(AF_INET, SOCK_DGRAM, 0);
	mreq.imr_address.s_addr = htonl(INADDR_LOOPBACK);
	if (setsockopt(out, IPPROTO_IP, IP_MULTICAST_IF, &mreq, sizeof(mreq)))
		zdtm_fail("IP_MULTICAST_IF: %m");
	inet_pton(AF_INET, "239.255.11.22", &addr.sin_addr);
	if (sendto(out, "mcast", 5, 0, (struct sockaddr *)&addr, sizeof(addr)) != 5)
		zdtm_fail("sendto the group: %m");
	p.fd = a;
	p.events = POLLIN;
	if (poll(&p, 1, 2000) != 1 || recv(a, buf, sizeof(buf), 0) != 5 || memcmp(buf, "mcast", 5))
		zdtm_fail("A did not get the datagram sent to its group");
	close(out);
	zdtm_pass_or_fail();
}

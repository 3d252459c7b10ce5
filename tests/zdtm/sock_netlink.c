/*
 * sock_netlink: netlink sockets keep their port ids, groups, destinations and
 * options, and still work after a restore.
 *
 *   A  NETLINK_ROUTE, SOCK_RAW, bound with port 0 (the kernel chooses the
 *      port) in RTMGRP_LINK, plus groups 7 (RTNLGRP_IPV4_ROUTE) and 33
 *      (RTNLGRP_BRVLAN, past the first 32) added with NETLINK_ADD_MEMBERSHIP;
 *      NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK, NETLINK_NO_ENOBUFS, SO_RCVBUF
 *   B  NETLINK_GENERIC, SOCK_DGRAM, bound to a port id of its own;
 *      NETLINK_CAP_ACK, NETLINK_PKTINFO
 *   C  NETLINK_USERSOCK bound to its own port id in group 5;
 *      NETLINK_BROADCAST_ERROR, SO_PASSCRED, a classic BPF filter, locked
 *   D  NETLINK_USERSOCK, auto-bound, connected to C's port
 *   E  NETLINK_KOBJECT_UEVENT, never bound
 * On SIGTERM: every port id, group list, destination and option is as at
 * READY; A answers an RTM_GETLINK dump (with "lo" in it) sent from its port;
 * B resolves the "nlctrl" family (CTRL_CMD_GETFAMILY) to GENL_ID_CTRL; C gets
 * exactly the unicast message D sends it and the multicast message D sends to
 * group 5; E is still unbound.
 */
#include "zdtm.h"

#include <errno.h>
#include <linux/filter.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NETLINK_GET_STRICT_CHK
#define NETLINK_GET_STRICT_CHK 12
#endif

static int a, b, c, d, e;
static unsigned a_port, b_port, c_port, d_port;
static int a_rcvbuf;
static unsigned a_groups[2];

static unsigned port_of(int fd, unsigned *groups)
{
	struct sockaddr_nl sa;
	socklen_t len = sizeof(sa);

	memset(&sa, 0, sizeof(sa));
	if (getsockname(fd, (struct sockaddr *)&sa, &len))
		zdtm_die("getsockname: %m");
	if (groups)
		*groups = sa.nl_groups;
	return sa.nl_pid;
}

static void bind_to(int fd, unsigned port, unsigned groups)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_pid = port, .nl_groups = groups };

	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)))
		zdtm_die("bind netlink port %u: %m", port);
}

static void set_int(int fd, int level, int name, int v)
{
	if (setsockopt(fd, level, name, &v, sizeof(v)))
		zdtm_die("setsockopt %d/%d: %m", level, name);
}

static int get_int(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof(v);

	if (getsockopt(fd, level, name, &v, &len))
		zdtm_fail("getsockopt %d/%d on fd %d: %m", level, name, fd);
	return v;
}

static void memberships(int fd, unsigned words[2])
{
	socklen_t len = 2 * sizeof(unsigned);

	words[0] = words[1] = 0;
	if (getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, words, &len))
		zdtm_fail("NETLINK_LIST_MEMBERSHIPS: %m");
}

/* One datagram within 2 s; its length, or -1. */
static ssize_t recv_one(int fd, void *buf, size_t size, struct sockaddr_nl *from)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	socklen_t len = sizeof(*from);

	if (poll(&p, 1, 2000) != 1)
		return -1;
	return recvfrom(fd, buf, size, 0, (struct sockaddr *)from, &len);
}

/* One datagram from port `port` within 2 s (group 5 of NETLINK_USERSOCK is
 * shared by every copy of this test running at the same time: messages of
 * other copies are skipped). */
static ssize_t recv_from_port(int fd, void *buf, size_t size, struct sockaddr_nl *from,
			      unsigned port)
{
	for (;;) {
		ssize_t n = recv_one(fd, buf, size, from);

		if (n < 0 || from->nl_pid == port)
			return n;
	}
}

static void check_route(void)
{
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req;
	static char buf[65536];
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK }, from;
	int found_lo = 0, done = 0;
	unsigned groups, words[2];

	if (port_of(a, &groups) != a_port)
		zdtm_fail("A: port id %u, expected %u", port_of(a, NULL), a_port);
	if (groups != a_groups[0])
		zdtm_fail("A: getsockname groups %#x, expected %#x", groups, a_groups[0]);
	memberships(a, words);
	if (words[0] != a_groups[0] || words[1] != a_groups[1])
		zdtm_fail("A: groups %#x %#x, expected %#x %#x", words[0], words[1],
			  a_groups[0], a_groups[1]);
	if (get_int(a, SOL_NETLINK, NETLINK_EXT_ACK) != 1 ||
	    get_int(a, SOL_NETLINK, NETLINK_GET_STRICT_CHK) != 1 ||
	    get_int(a, SOL_NETLINK, NETLINK_NO_ENOBUFS) != 1 ||
	    get_int(a, SOL_NETLINK, NETLINK_PKTINFO) != 0)
		zdtm_fail("A: SOL_NETLINK options changed");
	if (get_int(a, SOL_SOCKET, SO_RCVBUF) != a_rcvbuf)
		zdtm_fail("A: SO_RCVBUF %d, expected %d", get_int(a, SOL_SOCKET, SO_RCVBUF), a_rcvbuf);

	memset(&req, 0, sizeof(req));
	req.h.nlmsg_len = sizeof(req);
	req.h.nlmsg_type = RTM_GETLINK;
	req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.h.nlmsg_seq = 4242;
	req.i.ifi_family = AF_UNSPEC;
	if (sendto(a, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) != sizeof(req)) {
		zdtm_fail("A: send RTM_GETLINK: %m");
		return;
	}
	while (!done) {
		ssize_t n = recv_one(a, buf, sizeof(buf), &from);
		struct nlmsghdr *h;

		if (n < 0) {
			zdtm_fail("A: no complete answer to RTM_GETLINK: %m");
			return;
		}
		if (from.nl_pid != 0)
			zdtm_fail("A: message from port %u, not the kernel", from.nl_pid);
		for (h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			struct ifinfomsg *ifi;
			struct rtattr *rta;
			int len;

			/* Link notifications (group messages) may come in between. */
			if (h->nlmsg_seq != 4242)
				continue;
			if (h->nlmsg_pid != a_port)
				zdtm_fail("A: answer for port %u, expected %u", h->nlmsg_pid, a_port);
			if (h->nlmsg_type == NLMSG_DONE) {
				done = 1;
				break;
			}
			if (h->nlmsg_type == NLMSG_ERROR) {
				zdtm_fail("A: RTM_GETLINK answered with an error");
				return;
			}
			if (h->nlmsg_type != RTM_NEWLINK)
				continue;
			ifi = NLMSG_DATA(h);
			len = IFLA_PAYLOAD(h);
			for (rta = IFLA_RTA(ifi); RTA_OK(rta, len); rta = RTA_NEXT(rta, len))
				if (rta->rta_type == IFLA_IFNAME && !strcmp(RTA_DATA(rta), "lo"))
					found_lo = 1;
		}
	}
	if (!found_lo)
		zdtm_fail("A: RTM_GETLINK did not list lo");
}

static void check_genl(void)
{
	struct {
		struct nlmsghdr h;
		struct genlmsghdr g;
		char attrs[64];
	} req;
	static char buf[16384];
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK }, from;
	struct nlattr *na;
	struct nlmsghdr *h;
	ssize_t n;
	int id = -1, left;

	if (port_of(b, NULL) != b_port)
		zdtm_fail("B: port id %u, expected %u", port_of(b, NULL), b_port);
	if (get_int(b, SOL_NETLINK, NETLINK_CAP_ACK) != 1 ||
	    get_int(b, SOL_NETLINK, NETLINK_PKTINFO) != 1)
		zdtm_fail("B: NETLINK_CAP_ACK or NETLINK_PKTINFO lost");
	if (get_int(b, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM ||
	    get_int(b, SOL_SOCKET, SO_PROTOCOL) != NETLINK_GENERIC)
		zdtm_fail("B: not a NETLINK_GENERIC datagram socket");

	memset(&req, 0, sizeof(req));
	req.h.nlmsg_type = GENL_ID_CTRL;
	req.h.nlmsg_flags = NLM_F_REQUEST;
	req.h.nlmsg_seq = 77;
	req.g.cmd = CTRL_CMD_GETFAMILY;
	req.g.version = 1;
	na = (struct nlattr *)req.attrs;
	na->nla_type = CTRL_ATTR_FAMILY_NAME;
	na->nla_len = NLA_HDRLEN + sizeof("nlctrl");
	memcpy((char *)na + NLA_HDRLEN, "nlctrl", sizeof("nlctrl"));
	req.h.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN + NLA_ALIGN(na->nla_len));
	if (sendto(b, &req, req.h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		zdtm_fail("B: send CTRL_CMD_GETFAMILY: %m");
		return;
	}
	n = recv_one(b, buf, sizeof(buf), &from);
	h = (struct nlmsghdr *)buf;
	if (n < 0 || !NLMSG_OK(h, n) || h->nlmsg_type != GENL_ID_CTRL || h->nlmsg_seq != 77) {
		zdtm_fail("B: no CTRL_CMD_GETFAMILY answer (%zd bytes, type %d)", n,
			  n > 0 ? h->nlmsg_type : -1);
		return;
	}
	if (h->nlmsg_pid != b_port)
		zdtm_fail("B: answer for port %u, expected %u", h->nlmsg_pid, b_port);
	left = h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
	na = (struct nlattr *)((char *)NLMSG_DATA(h) + GENL_HDRLEN);
	while (left >= NLA_HDRLEN && na->nla_len >= NLA_HDRLEN && na->nla_len <= left) {
		if (na->nla_type == CTRL_ATTR_FAMILY_ID)
			id = *(unsigned short *)((char *)na + NLA_HDRLEN);
		left -= NLA_ALIGN(na->nla_len);
		na = (struct nlattr *)((char *)na + NLA_ALIGN(na->nla_len));
	}
	if (id != GENL_ID_CTRL)
		zdtm_fail("B: nlctrl resolved to family %d, expected %d", id, GENL_ID_CTRL);
}

static void check_usersock(void)
{
	static const char uni[] = "unicast from D to C", multi[] = "multicast from D to group 5";
	struct sockaddr_nl peer, group = { .nl_family = AF_NETLINK, .nl_groups = 1 << 4 }, from;
	socklen_t len = sizeof(peer);
	struct sock_filter insn;
	socklen_t flen = 0;
	unsigned groups, words[2];
	char buf[256];
	ssize_t n;

	if (port_of(c, &groups) != c_port || groups != 1 << 4)
		zdtm_fail("C: port %u groups %#x, expected %u %#x", port_of(c, NULL), groups,
			  c_port, 1 << 4);
	memberships(c, words);
	if (words[0] != 1 << 4 || words[1])
		zdtm_fail("C: groups %#x %#x", words[0], words[1]);
	if (get_int(c, SOL_NETLINK, NETLINK_BROADCAST_ERROR) != 1 ||
	    get_int(c, SOL_SOCKET, SO_PASSCRED) != 1 || get_int(c, SOL_SOCKET, SO_LOCK_FILTER) != 1)
		zdtm_fail("C: NETLINK_BROADCAST_ERROR, SO_PASSCRED or SO_LOCK_FILTER lost");
	if (getsockopt(c, SOL_SOCKET, SO_GET_FILTER, NULL, &flen) || flen != 1)
		zdtm_fail("C: filter of %u instructions, expected 1", flen);
	else if (getsockopt(c, SOL_SOCKET, SO_GET_FILTER, &insn, &flen) ||
		 insn.code != (BPF_RET | BPF_K) || insn.k != 0xffff)
		zdtm_fail("C: not the filter attached");

	if (port_of(d, NULL) != d_port)
		zdtm_fail("D: port id %u, expected %u", port_of(d, NULL), d_port);
	memset(&peer, 0, sizeof(peer));
	if (getpeername(d, (struct sockaddr *)&peer, &len) || peer.nl_pid != c_port)
		zdtm_fail("D: connected to port %u, expected %u", peer.nl_pid, c_port);

	if (send(d, uni, sizeof(uni), 0) != sizeof(uni))
		zdtm_fail("D: send: %m");
	n = recv_from_port(c, buf, sizeof(buf), &from, d_port);
	if (n != sizeof(uni) || memcmp(buf, uni, n) || from.nl_pid != d_port || from.nl_groups)
		zdtm_fail("C: unicast: %zd bytes from port %u groups %#x", n, from.nl_pid,
			  from.nl_groups);
	/* The kernel delivers to the group, then to port 0 of the address, which no
	 * NETLINK_USERSOCK kernel socket holds: ECONNREFUSED after the delivery. */
	if (sendto(d, multi, sizeof(multi), 0, (struct sockaddr *)&group, sizeof(group)) !=
	    sizeof(multi) && errno != ECONNREFUSED)
		zdtm_fail("D: send to group 5: %m");
	n = recv_from_port(c, buf, sizeof(buf), &from, d_port);
	if (n != sizeof(multi) || memcmp(buf, multi, n) || from.nl_groups != 1 << 4)
		zdtm_fail("C: multicast: %zd bytes, groups %#x", n, from.nl_groups);
	for (;;) {
		socklen_t flen2 = sizeof(from);

		n = recvfrom(c, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from, &flen2);
		if (n < 0)
			break;
		if (from.nl_pid == d_port)
			zdtm_fail("C: a message more than D sent");
	}
}

int main(int argc, char **argv)
{
	struct sock_filter accept_all = BPF_STMT(BPF_RET | BPF_K, 0xffff);
	struct sock_fprog prog = { .len = 1, .filter = &accept_all };
	struct sockaddr_nl to_c = { .nl_family = AF_NETLINK };
	unsigned pid;

	zdtm_init(argc, argv);
	pid = getpid();
	a = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	b = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_GENERIC);
	c = socket(AF_NETLINK, SOCK_RAW, NETLINK_USERSOCK);
	d = socket(AF_NETLINK, SOCK_RAW, NETLINK_USERSOCK);
	e = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_KOBJECT_UEVENT);
	if (a < 0 || b < 0 || c < 0 || d < 0 || e < 0)
		zdtm_die("socket: %m");

	bind_to(a, 0, RTMGRP_LINK);
	set_int(a, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_IPV4_ROUTE);
	set_int(a, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 33);
	set_int(a, SOL_NETLINK, NETLINK_EXT_ACK, 1);
	set_int(a, SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1);
	set_int(a, SOL_NETLINK, NETLINK_NO_ENOBUFS, 1);
	set_int(a, SOL_SOCKET, SO_RCVBUF, 123456);
	a_port = port_of(a, NULL);
	a_rcvbuf = get_int(a, SOL_SOCKET, SO_RCVBUF);
	memberships(a, a_groups);
	if (a_groups[0] != (RTMGRP_LINK | 1 << (RTNLGRP_IPV4_ROUTE - 1)) || a_groups[1] != 1)
		zdtm_die("A: groups %#x %#x", a_groups[0], a_groups[1]);

	b_port = 0x7e000000 | pid;
	bind_to(b, b_port, 0);
	set_int(b, SOL_NETLINK, NETLINK_CAP_ACK, 1);
	set_int(b, SOL_NETLINK, NETLINK_PKTINFO, 1);

	c_port = 0x7d000000 | pid;
	set_int(c, SOL_NETLINK, NETLINK_BROADCAST_ERROR, 1);
	set_int(c, SOL_SOCKET, SO_PASSCRED, 1);
	if (setsockopt(c, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)))
		zdtm_die("SO_ATTACH_FILTER: %m");
	set_int(c, SOL_SOCKET, SO_LOCK_FILTER, 1);
	bind_to(c, c_port, 1 << 4);

	bind_to(d, 0, 0);
	d_port = port_of(d, NULL);
	to_c.nl_pid = c_port;
	if (connect(d, (struct sockaddr *)&to_c, sizeof(to_c)))
		zdtm_die("connect: %m");

	zdtm_ready();
	zdtm_wait_check();

	check_route();
	check_genl();
	check_usersock();
	if (port_of(e, NULL) != 0 || get_int(e, SOL_SOCKET, SO_PROTOCOL) != NETLINK_KOBJECT_UEVENT)
		zdtm_fail("E: bound to %u or not NETLINK_KOBJECT_UEVENT", port_of(e, NULL));
	zdtm_pass_or_fail();
}

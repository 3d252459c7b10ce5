/*
 * sock_packet: packet sockets keep their interface, protocol, options,
 * filter, memberships and fanout group, and still receive after a restore.
 *
 *   P  SOCK_DGRAM, bound to lo for ethertype 0x88b5; PACKET_AUXDATA,
 *      PACKET_ORIGDEV, PACKET_VERSION TPACKET_V2, PACKET_TIMESTAMP,
 *      SO_RCVBUF; a classic BPF filter passing only payloads that start with
 *      0x5a, locked (SO_LOCK_FILTER); a multicast membership on lo, added
 *      twice
 *   R  SOCK_RAW created for ethertype 0x88b6 (never bound: every interface),
 *      PACKET_VNET_HDR, in a PACKET_FANOUT_HASH group of its own
 * On SIGTERM: getsockname, the options, the filter, the fanout group and the
 * membership (/proc/net/dev_mcast) are as at READY; a frame of 0x88b5 sent on
 * lo whose payload starts with 0 is filtered out, and one that starts with
 * 0x5a reaches P once, with exactly its bytes and an auxdata message; a frame
 * of 0x88b6 reaches R once with a virtio-net header and its Ethernet header.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <linux/net_tstamp.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PROTO_P 0x88b5
#define PROTO_R 0x88b6
#define VNET_HDR_LEN 10

static int p, r, lo;
static int p_rcvbuf, r_fanout;
static const unsigned char mc_addr[6] = { 0x33, 0x33, 0x00, 0x00, 0x5a, 0x77 };

static int get_int(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof(v);

	if (getsockopt(fd, level, name, &v, &len))
		zdtm_fail("getsockopt %d/%d on fd %d: %m", level, name, fd);
	return v;
}

static void set_int(int fd, int level, int name, int v)
{
	if (setsockopt(fd, level, name, &v, sizeof(v)))
		zdtm_die("setsockopt %d/%d: %m", level, name);
}

static void check_addr(int fd, const char *who, int ifindex, int proto)
{
	struct sockaddr_ll sa;
	socklen_t len = sizeof(sa);

	memset(&sa, 0, sizeof(sa));
	if (getsockname(fd, (struct sockaddr *)&sa, &len))
		zdtm_fail("%s: getsockname: %m", who);
	else if (sa.sll_ifindex != ifindex || ntohs(sa.sll_protocol) != proto)
		zdtm_fail("%s: bound to interface %d protocol %#x, expected %d %#x", who,
			  sa.sll_ifindex, ntohs(sa.sll_protocol), ifindex, proto);
}

/* Sends `len` bytes of payload as a frame of `proto` on lo. */
static void send_frame(int proto, const void *payload, size_t len)
{
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(proto),
				  .sll_ifindex = lo, .sll_halen = ETH_ALEN };
	int s = socket(AF_PACKET, SOCK_DGRAM, 0);

	if (s < 0 || sendto(s, payload, len, 0, (struct sockaddr *)&to, sizeof(to)) != (ssize_t)len)
		zdtm_fail("send a frame of %#x on lo: %m", proto);
	if (s >= 0)
		close(s);
}

/* One packet within 2 s into buf; its length (-1: none); *aux: an auxdata
 * control message came with it. */
static ssize_t recv_packet(int fd, void *buf, size_t size, int *aux)
{
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	char control[256];
	struct iovec iov = { .iov_base = buf, .iov_len = size };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			    .msg_controllen = sizeof(control) };
	struct cmsghdr *c;
	ssize_t n;

	if (poll(&pf, 1, 2000) != 1)
		return -1;
	n = recvmsg(fd, &m, 0);
	if (aux) {
		*aux = 0;
		for (c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
			if (c->cmsg_level == SOL_PACKET && c->cmsg_type == PACKET_AUXDATA)
				*aux = 1;
	}
	return n;
}

static int has_membership(void)
{
	char buf[16384], want[64];
	ssize_t n = zdtm_read_file("/proc/net/dev_mcast", buf, sizeof(buf) - 1);

	if (n < 0)
		return 0;
	buf[n] = 0;
	snprintf(want, sizeof(want), "%02x%02x%02x%02x%02x%02x", mc_addr[0], mc_addr[1],
		 mc_addr[2], mc_addr[3], mc_addr[4], mc_addr[5]);
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
		if (strstr(line, " lo ") && strstr(line, want))
			return 1;
	return 0;
}

static void check_p(void)
{
	unsigned char good[64], bad[64], buf[256];
	struct sock_filter f[8];
	socklen_t flen = 0;
	ssize_t n;
	int aux;

	check_addr(p, "P", lo, PROTO_P);
	if (get_int(p, SOL_PACKET, PACKET_AUXDATA) != 1 || get_int(p, SOL_PACKET, PACKET_ORIGDEV) != 1 ||
	    get_int(p, SOL_PACKET, PACKET_VERSION) != TPACKET_V2 ||
	    get_int(p, SOL_PACKET, PACKET_TIMESTAMP) != SOF_TIMESTAMPING_RAW_HARDWARE)
		zdtm_fail("P: SOL_PACKET options changed");
	if (get_int(p, SOL_SOCKET, SO_RCVBUF) != p_rcvbuf)
		zdtm_fail("P: SO_RCVBUF %d, expected %d", get_int(p, SOL_SOCKET, SO_RCVBUF), p_rcvbuf);
	if (get_int(p, SOL_SOCKET, SO_LOCK_FILTER) != 1)
		zdtm_fail("P: the filter is not locked");
	if (getsockopt(p, SOL_SOCKET, SO_GET_FILTER, NULL, &flen) || flen != 4)
		zdtm_fail("P: a filter of %u instructions, expected 4", flen);
	else if (getsockopt(p, SOL_SOCKET, SO_GET_FILTER, f, &flen) || f[1].k != 0x5a)
		zdtm_fail("P: not the filter attached");
	if (!has_membership())
		zdtm_fail("P: the multicast membership on lo is gone");

	zdtm_fill(good, sizeof(good), getpid());
	good[0] = 0x5a;
	memcpy(bad, good, sizeof(bad));
	bad[0] = 0;
	send_frame(PROTO_P, bad, sizeof(bad));
	send_frame(PROTO_P, good, sizeof(good));
	/* Copies of this test running at the same time send frames of 0x88b5 on lo
	 * too: those (another pattern after the first byte) are skipped. */
	for (;;) {
		n = recv_packet(p, buf, sizeof(buf), &aux);
		if (n < 0) {
			zdtm_fail("P: the frame that passes the filter did not arrive");
			break;
		}
		if (n != sizeof(good) || memcmp(buf + 1, good + 1, n - 1))
			continue;
		if (buf[0] != 0x5a)
			zdtm_fail("P: the filter let a frame through");
		else if (!aux)
			zdtm_fail("P: no PACKET_AUXDATA control message");
		break;
	}
	/* A second copy of our frame within 2 s would be a duplicate. */
	if (recv_packet(p, buf, sizeof(buf), NULL) == sizeof(good) &&
	    !memcmp(buf + 1, good + 1, sizeof(good) - 1))
		zdtm_fail("P: a frame of ours came more than once");
}

static void check_r(void)
{
	unsigned char payload[40], buf[256];
	ssize_t n;

	check_addr(r, "R", 0, PROTO_R);
	if (get_int(r, SOL_PACKET, PACKET_VNET_HDR) != 1)
		zdtm_fail("R: PACKET_VNET_HDR lost");
	if (get_int(r, SOL_PACKET, PACKET_FANOUT) != r_fanout)
		zdtm_fail("R: fanout %#x, expected %#x", get_int(r, SOL_PACKET, PACKET_FANOUT), r_fanout);
	zdtm_fill(payload, sizeof(payload), getpid() + 1);
	send_frame(PROTO_R, payload, sizeof(payload));
	/* Frames of other copies of this test (another payload) are skipped. */
	for (;;) {
		n = recv_packet(r, buf, sizeof(buf), NULL);
		if (n < 0) {
			zdtm_fail("R: the frame sent did not arrive");
			break;
		}
		if (n != VNET_HDR_LEN + ETH_HLEN + (ssize_t)sizeof(payload) ||
		    memcmp(buf + VNET_HDR_LEN + ETH_HLEN, payload, sizeof(payload)))
			continue;
		if (buf[VNET_HDR_LEN + 12] != PROTO_R >> 8 ||
		    buf[VNET_HDR_LEN + 13] != (PROTO_R & 0xff))
			zdtm_fail("R: the frame came without its Ethernet header after the virtio-net header");
		break;
	}
}

int main(int argc, char **argv)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x5a, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, 0xffff),
		BPF_STMT(BPF_RET | BPF_K, 0),
	};
	struct sock_fprog prog = { .len = 4, .filter = code };
	struct packet_mreq mr = { .mr_type = PACKET_MR_MULTICAST, .mr_alen = 6 };
	struct sockaddr_ll sa = { .sll_family = AF_PACKET, .sll_protocol = htons(PROTO_P) };
	char buf[256];

	zdtm_init(argc, argv);
	lo = if_nametoindex("lo");
	if (!lo)
		zdtm_die("no lo: %m");
	p = socket(AF_PACKET, SOCK_DGRAM, 0);
	r = socket(AF_PACKET, SOCK_RAW, htons(PROTO_R));
	if (p < 0 || r < 0)
		zdtm_die("socket: %m");

	set_int(p, SOL_PACKET, PACKET_AUXDATA, 1);
	set_int(p, SOL_PACKET, PACKET_ORIGDEV, 1);
	set_int(p, SOL_PACKET, PACKET_VERSION, TPACKET_V2);
	set_int(p, SOL_PACKET, PACKET_TIMESTAMP, SOF_TIMESTAMPING_RAW_HARDWARE);
	set_int(p, SOL_SOCKET, SO_RCVBUF, 150000);
	p_rcvbuf = get_int(p, SOL_SOCKET, SO_RCVBUF);
	if (setsockopt(p, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)))
		zdtm_die("SO_ATTACH_FILTER: %m");
	set_int(p, SOL_SOCKET, SO_LOCK_FILTER, 1);
	sa.sll_ifindex = lo;
	if (bind(p, (struct sockaddr *)&sa, sizeof(sa)))
		zdtm_die("bind P to lo: %m");
	mr.mr_ifindex = lo;
	memcpy(mr.mr_address, mc_addr, 6);
	for (int i = 0; i < 2; i++)
		if (setsockopt(p, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)))
			zdtm_die("PACKET_ADD_MEMBERSHIP: %m");

	set_int(r, SOL_PACKET, PACKET_VNET_HDR, 1);
	set_int(r, SOL_PACKET, PACKET_FANOUT, (getpid() & 0xffff) | PACKET_FANOUT_HASH << 16);
	r_fanout = get_int(r, SOL_PACKET, PACKET_FANOUT);

	/* Nothing queued at READY: frames of other copies of this test are dropped
	 * with the queue anyway (see engine::files::packet_socket). */
	while (recv(r, buf, sizeof(buf), MSG_DONTWAIT) >= 0)
		;
	zdtm_ready();
	zdtm_wait_check();

	/* Frames of other copies of this test that came meanwhile. */
	while (recv(r, buf, sizeof(buf), MSG_DONTWAIT) >= 0)
		;
	check_p();
	check_r();
	zdtm_pass_or_fail();
}

/*
 * sock_opts: socket options of inet sockets.
 *
 *   client (TCP, connected over loopback): SO_KEEPALIVE, TCP_KEEPIDLE 100, TCP_KEEPINTVL 20,
 *     TCP_KEEPCNT 4, TCP_NODELAY, SO_LINGER {1, 5}, SO_RCVLOWAT 3, SO_PRIORITY 4,
 *     SO_MARK 77, IP_TOS 0x10, IP_TTL 33
 *   server (its accepted end): TCP_CORK
 *   listener: IP_FREEBIND, SO_BINDTODEVICE "lo", SO_SNDBUF 100000, SO_RCVBUF 90000
 *   udp: SO_BROADCAST, IP_TTL 5, SO_PRIORITY 2, SO_MARK 9, SO_RCVBUF 70000
 *   udp6: IPV6_V6ONLY, IPV6_TCLASS 0x20, IPV6_UNICAST_HOPS 9
 *   also: client SO_RCVTIMEO {3, 500000}, TCP_USER_TIMEOUT 5000, TCP_CONGESTION "reno";
 *     listener TCP_DEFER_ACCEPT 5; udp IP_RECVERR, IP_PKTINFO; udp6 IPV6_RECVPKTINFO
 *   filtered: UDP bound to 127.0.0.1 with a classic BPF filter passing datagrams of 4 bytes
 *     only, locked (SO_LOCK_FILTER)
 * On SIGTERM every option reads back as it was at READY (buffer sizes as the kernel reported
 * them then), the connection still carries data both ways, the filter reads back the same
 * and still filters (of "abc" and "abcd" sent, only "abcd" arrives), and cannot be removed.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <linux/filter.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct opt {
	const char *name;
	int *fd, level, opt, value;
};

static int client, server, listener, udp, udp6, filtered;

static struct opt opts[] = {
	{ "client SO_KEEPALIVE", &client, SOL_SOCKET, SO_KEEPALIVE, 1 },
	{ "client TCP_KEEPIDLE", &client, IPPROTO_TCP, TCP_KEEPIDLE, 100 },
	{ "client TCP_KEEPINTVL", &client, IPPROTO_TCP, TCP_KEEPINTVL, 20 },
	{ "client TCP_KEEPCNT", &client, IPPROTO_TCP, TCP_KEEPCNT, 4 },
	{ "client TCP_NODELAY", &client, IPPROTO_TCP, TCP_NODELAY, 1 },
	{ "client SO_RCVLOWAT", &client, SOL_SOCKET, SO_RCVLOWAT, 3 },
	{ "client SO_PRIORITY", &client, SOL_SOCKET, SO_PRIORITY, 4 },
	{ "client SO_MARK", &client, SOL_SOCKET, SO_MARK, 77 },
	{ "client IP_TOS", &client, IPPROTO_IP, IP_TOS, 0x10 },
	{ "client IP_TTL", &client, IPPROTO_IP, IP_TTL, 33 },
	{ "server TCP_CORK", &server, IPPROTO_TCP, TCP_CORK, 1 },
	{ "listener IP_FREEBIND", &listener, IPPROTO_IP, IP_FREEBIND, 1 },
	{ "listener SO_SNDBUF", &listener, SOL_SOCKET, SO_SNDBUF, 100000 },
	{ "listener SO_RCVBUF", &listener, SOL_SOCKET, SO_RCVBUF, 90000 },
	{ "udp SO_BROADCAST", &udp, SOL_SOCKET, SO_BROADCAST, 1 },
	{ "udp IP_TTL", &udp, IPPROTO_IP, IP_TTL, 5 },
	{ "udp SO_PRIORITY", &udp, SOL_SOCKET, SO_PRIORITY, 2 },
	{ "udp SO_MARK", &udp, SOL_SOCKET, SO_MARK, 9 },
	{ "udp SO_RCVBUF", &udp, SOL_SOCKET, SO_RCVBUF, 70000 },
	{ "udp6 IPV6_V6ONLY", &udp6, IPPROTO_IPV6, IPV6_V6ONLY, 1 },
	{ "udp6 IPV6_TCLASS", &udp6, IPPROTO_IPV6, IPV6_TCLASS, 0x20 },
	{ "udp6 IPV6_UNICAST_HOPS", &udp6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9 },
	{ "filtered SO_LOCK_FILTER", &filtered, SOL_SOCKET, SO_LOCK_FILTER, 1 },
	{ "client TCP_USER_TIMEOUT", &client, IPPROTO_TCP, TCP_USER_TIMEOUT, 5000 },
	{ "listener TCP_DEFER_ACCEPT", &listener, IPPROTO_TCP, TCP_DEFER_ACCEPT, 5 },
	{ "udp IP_RECVERR", &udp, IPPROTO_IP, IP_RECVERR, 1 },
	{ "udp IP_PKTINFO", &udp, IPPROTO_IP, IP_PKTINFO, 1 },
	{ "udp6 IPV6_RECVPKTINFO", &udp6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1 },
};

/* accept a datagram of 4 bytes (12 with its UDP header), drop anything else */
static struct sock_filter prog[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 12, 0, 1),
	BPF_STMT(BPF_RET | BPF_K, 0xffff),
	BPF_STMT(BPF_RET | BPF_K, 0),
};
#define NOPTS (int)(sizeof(opts) / sizeof(opts[0]))

static int getint(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);

	if (getsockopt(fd, level, name, &v, &l))
		return -1;
	return v;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t l = sizeof(a);
	struct linger lg = { 1, 5 };
	int seen[NOPTS];
	char dev[16];

	zdtm_init(argc, argv);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	listener = socket(AF_INET, SOCK_STREAM, 0);
	for (int i = 0; i < NOPTS; i++)
		if (*opts[i].fd == listener &&
		    setsockopt(listener, opts[i].level, opts[i].opt, &opts[i].value, sizeof(int)))
			zdtm_die("%s: %m", opts[i].name);
	if (setsockopt(listener, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) ||
	    bind(listener, (void *)&a, sizeof(a)) || listen(listener, 1) ||
	    getsockname(listener, (void *)&a, &l))
		zdtm_die("listener: %m");
	client = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(client, (void *)&a, sizeof(a)))
		zdtm_die("connect: %m");
	server = accept(listener, NULL, NULL);
	udp = socket(AF_INET, SOCK_DGRAM, 0);
	udp6 = socket(AF_INET6, SOCK_DGRAM, 0);
	struct sockaddr_in fa = { .sin_family = AF_INET };
	socklen_t fl = sizeof(fa);
	struct sock_fprog fp = { sizeof(prog) / sizeof(prog[0]), prog };
	fa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	filtered = socket(AF_INET, SOCK_DGRAM, 0);
	if (filtered < 0 || bind(filtered, (void *)&fa, sizeof(fa)) ||
	    getsockname(filtered, (void *)&fa, &fl) ||
	    setsockopt(filtered, SOL_SOCKET, SO_ATTACH_FILTER, &fp, sizeof(fp)))
		zdtm_die("filtered: %m");
	if (server < 0 || udp < 0 || udp6 < 0)
		zdtm_die("sockets: %m");
	for (int i = 0; i < NOPTS; i++)
		if (*opts[i].fd != listener &&
		    setsockopt(*opts[i].fd, opts[i].level, opts[i].opt, &opts[i].value, sizeof(int)))
			zdtm_die("%s: %m", opts[i].name);
	if (setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)))
		zdtm_die("SO_LINGER: %m");
	struct timeval tv = { 3, 500000 };
	if (setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(client, IPPROTO_TCP, TCP_CONGESTION, "reno", 4))
		zdtm_die("SO_RCVTIMEO/TCP_CONGESTION: %m");
	for (int i = 0; i < NOPTS; i++)
		seen[i] = getint(*opts[i].fd, opts[i].level, opts[i].opt);

	zdtm_ready();
	zdtm_wait_check();

	for (int i = 0; i < NOPTS; i++) {
		int v = getint(*opts[i].fd, opts[i].level, opts[i].opt);
		if (v != seen[i])
			zdtm_fail("%s: %d, expected %d", opts[i].name, v, seen[i]);
	}
	l = sizeof(lg);
	memset(&lg, 0, sizeof(lg));
	if (getsockopt(client, SOL_SOCKET, SO_LINGER, &lg, &l) || lg.l_onoff != 1 || lg.l_linger != 5)
		zdtm_fail("SO_LINGER: {%d, %d}", lg.l_onoff, lg.l_linger);
	struct timeval tv2 = { 0, 0 };
	l = sizeof(tv2);
	if (getsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv2, &l) || tv2.tv_sec != 3 ||
	    tv2.tv_usec != 500000)
		zdtm_fail("SO_RCVTIMEO: {%ld, %ld}", (long)tv2.tv_sec, (long)tv2.tv_usec);
	char cc[16] = "";
	l = sizeof(cc);
	if (getsockopt(client, IPPROTO_TCP, TCP_CONGESTION, cc, &l) || strcmp(cc, "reno"))
		zdtm_fail("TCP_CONGESTION: \"%s\"", cc);
	l = sizeof(dev);
	memset(dev, 0, sizeof(dev));
	if (getsockopt(listener, SOL_SOCKET, SO_BINDTODEVICE, dev, &l) || strcmp(dev, "lo"))
		zdtm_fail("SO_BINDTODEVICE: \"%s\"", dev);

	/* the filter: the same program, still filtering, still locked */
	struct sock_filter got[8];
	socklen_t gl = 8;
	if (getsockopt(filtered, SOL_SOCKET, SO_GET_FILTER, got, &gl) ||
	    gl != sizeof(prog) / sizeof(prog[0]) || memcmp(got, prog, sizeof(prog)))
		zdtm_fail("filtered: SO_GET_FILTER differs (%u instructions)", gl);
	if (sendto(udp, "abc", 3, 0, (void *)&fa, sizeof(fa)) != 3 ||
	    sendto(udp, "abcd", 4, 0, (void *)&fa, sizeof(fa)) != 4)
		zdtm_fail("udp: sendto: %m");
	usleep(50000);
	char fb[8];
	if (recv(filtered, fb, sizeof(fb), MSG_DONTWAIT) != 4 ||
	    recv(filtered, fb, sizeof(fb), MSG_DONTWAIT) != -1)
		zdtm_fail("filtered: not only the 4-byte datagram");
	if (setsockopt(filtered, SOL_SOCKET, SO_DETACH_FILTER, NULL, 0) == 0)
		zdtm_fail("filtered: the filter is no longer locked");

	/* The connection still works (the server is corked: uncork to push). */
	char b[4];
	int zero = 0;
	if (write(client, "ping", 4) != 4 || read(server, b, 4) != 4 || memcmp(b, "ping", 4))
		zdtm_fail("client -> server");
	if (write(server, "pong", 4) != 4 ||
	    setsockopt(server, IPPROTO_TCP, TCP_CORK, &zero, sizeof(zero)) ||
	    read(client, b, 4) != 4 || memcmp(b, "pong", 4))
		zdtm_fail("server -> client");
	/* the client closes first (so no TIME_WAIT on the listener's port) */
	lg.l_onoff = 0;
	setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(client);
	if (read(server, b, 1) != 0)
		zdtm_fail("no EOF");
	close(server);
	zdtm_pass_or_fail();
}

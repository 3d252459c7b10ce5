/*
 * sock_unix_listen: named unix sockets, listeners with connections waiting
 * to be accepted, and a named datagram socket with datagrams queued.
 *
 *   L1: stream listener bound to the relative path "l1.sock" (file mode 0640),
 *       backlog 5; c0 connected and was accepted (s0), with data queued both
 *       ways; c1 and c2 connected after it and wait in the backlog.
 *   L2: seqpacket listener on an abstract name; c3 waits in its backlog.
 *   D1: datagram socket bound to the absolute path of "d1.sock"; an unbound
 *       socket sent it two datagrams with sendto, d2 (connected to D1) one
 *       more, and N (bound to an abstract name) a fourth: recvfrom names N.
 *   D3: datagram socket bound to the absolute path of "d3.sock", whose file
 *       was then deleted: it keeps its name, and no file comes back.
 *   U:  an unbound, unconnected stream socket; B: a stream socket bound to an
 *       abstract name, neither listening nor connected.
 * On SIGTERM: the names (getsockname, the relative one too; s0 shows L1's, and
 * so does c0's getpeername),
 * the socket file's mode, the backlog (accept gives c1's then c2's
 * connection, each works both ways, and nothing else is waiting), s0/c0's
 * queued data, D1's three datagrams, d2 still connected to D1, U unnamed and
 * unconnected.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static char l2name[64], bname[64], nname[64], d1path[PATH_MAX], d3path[PATH_MAX];

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (abstract) {
		memcpy(a->sun_path + 1, name, strlen(name));
		return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
	}
	strcpy(a->sun_path, name);
	return sizeof(*a);
}

static int sock(int type)
{
	int fd = socket(AF_UNIX, type, 0);

	if (fd < 0)
		zdtm_die("socket: %m");
	return fd;
}

static void do_bind(int fd, const char *name, int abstract)
{
	struct sockaddr_un a;
	socklen_t l = mkaddr(&a, name, abstract);

	if (bind(fd, (struct sockaddr *)&a, l))
		zdtm_die("bind %s: %m", name);
}

static void do_connect(int fd, const char *name, int abstract)
{
	struct sockaddr_un a;
	socklen_t l = mkaddr(&a, name, abstract);

	if (connect(fd, (struct sockaddr *)&a, l))
		zdtm_die("connect %s: %m", name);
}

/* getsockname/getpeername as "@name", "path" or "" (unnamed); "?" on error. */
static const char *name_of(int fd, int peer)
{
	static char out[2][PATH_MAX];
	static int which;
	struct sockaddr_un a;
	socklen_t l = sizeof(a);
	char *o = out[which++ & 1];

	memset(&a, 0, sizeof(a));
	if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&a, &l))
		return "?";
	if (l <= offsetof(struct sockaddr_un, sun_path))
		return "";
	if (a.sun_path[0] == 0)
		snprintf(o, PATH_MAX, "@%.*s", (int)(l - offsetof(struct sockaddr_un, sun_path) - 1),
			 a.sun_path + 1);
	else
		snprintf(o, PATH_MAX, "%s", a.sun_path);
	return o;
}

static void put(int fd, const char *s)
{
	if (send(fd, s, strlen(s), MSG_NOSIGNAL) != (ssize_t)strlen(s))
		zdtm_die("send: %m");
}

static void expect(const char *what, int fd, const char *s)
{
	char buf[256];
	ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

	if (r != (ssize_t)strlen(s) || memcmp(buf, s, r))
		zdtm_fail("%s: read %zd bytes (errno %d), expected \"%s\"", what, r, errno, s);
}

/* Accepts one connection of listener l and checks it talks with client c. */
static void accept_from(const char *what, int l, int c)
{
	int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);

	if (s < 0) {
		zdtm_fail("%s: accept: %m", what);
		return;
	}
	put(c, "ping");
	usleep(1000);
	expect(what, s, "ping");
	put(s, "pong");
	expect(what, c, "pong");
	close(s);
}

int main(int argc, char **argv)
{
	int l1, l2, c0, s0, c1, c2, c3, d1, d2, d3, u, b, snd, n;
	struct sockaddr_un a;
	struct stat st;

	zdtm_init(argc, argv);
	snprintf(l2name, sizeof(l2name), "stasis-zdtm-l2-%d", getpid());
	snprintf(bname, sizeof(bname), "stasis-zdtm-b-%d", getpid());
	snprintf(nname, sizeof(nname), "stasis-zdtm-n-%d", getpid());
	if (!getcwd(d1path, sizeof(d1path) - 10))
		zdtm_die("getcwd: %m");
	strcpy(d3path, d1path);
	strcat(d1path, "/d1.sock");
	strcat(d3path, "/d3.sock");
	unlink("l1.sock");
	unlink(d1path);

	l1 = sock(SOCK_STREAM);
	do_bind(l1, "l1.sock", 0);
	if (chmod("l1.sock", 0640) || listen(l1, 5))
		zdtm_die("chmod/listen: %m");
	c0 = sock(SOCK_STREAM);
	do_connect(c0, "l1.sock", 0);
	s0 = accept(l1, NULL, NULL);
	if (s0 < 0)
		zdtm_die("accept: %m");
	put(c0, "to-server");
	put(s0, "to-client");
	c1 = sock(SOCK_STREAM);
	do_connect(c1, "l1.sock", 0);
	c2 = sock(SOCK_STREAM);
	do_connect(c2, "l1.sock", 0);

	l2 = sock(SOCK_SEQPACKET);
	do_bind(l2, l2name, 1);
	if (listen(l2, 3))
		zdtm_die("listen: %m");
	c3 = sock(SOCK_SEQPACKET);
	do_connect(c3, l2name, 1);

	d1 = sock(SOCK_DGRAM);
	do_bind(d1, d1path, 0);
	snd = sock(SOCK_DGRAM);
	mkaddr(&a, d1path, 0);
	if (sendto(snd, "dg-one", 6, 0, (struct sockaddr *)&a, sizeof(a)) != 6 ||
	    sendto(snd, "dg-two", 6, 0, (struct sockaddr *)&a, sizeof(a)) != 6)
		zdtm_die("sendto: %m");
	close(snd);
	d2 = sock(SOCK_DGRAM);
	do_connect(d2, d1path, 0);
	put(d2, "dg-three");
	n = sock(SOCK_DGRAM);
	do_bind(n, nname, 1);
	mkaddr(&a, d1path, 0);
	if (sendto(n, "dg-named", 8, 0, (struct sockaddr *)&a, sizeof(a)) != 8)
		zdtm_die("sendto: %m");

	unlink(d3path);
	d3 = sock(SOCK_DGRAM);
	do_bind(d3, d3path, 0);
	if (unlink(d3path))
		zdtm_die("unlink: %m");

	u = sock(SOCK_STREAM);
	b = sock(SOCK_STREAM);
	do_bind(b, bname, 1);

	zdtm_ready();
	zdtm_wait_check();

	if (strcmp(name_of(l1, 0), "l1.sock"))
		zdtm_fail("L1 is bound to \"%s\"", name_of(l1, 0));
	if (stat("l1.sock", &st) || !S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0640)
		zdtm_fail("l1.sock: mode %o", st.st_mode);
	if (strcmp(name_of(s0, 0), "l1.sock") || strcmp(name_of(c0, 1), "l1.sock"))
		zdtm_fail("s0 is named \"%s\", c0's peer \"%s\"", name_of(s0, 0), name_of(c0, 1));
	expect("s0", s0, "to-server");
	expect("c0", c0, "to-client");
	accept_from("L1 first pending (c1)", l1, c1);
	accept_from("L1 second pending (c2)", l1, c2);
	fcntl(l1, F_SETFL, O_NONBLOCK);
	if (accept(l1, NULL, NULL) != -1 || errno != EAGAIN)
		zdtm_fail("L1: a third connection was waiting");

	if (strcmp(name_of(l2, 0) + 1, l2name))
		zdtm_fail("L2 is bound to \"%s\"", name_of(l2, 0));
	accept_from("L2 pending (c3)", l2, c3);

	if (strcmp(name_of(d1, 0), d1path))
		zdtm_fail("D1 is bound to \"%s\"", name_of(d1, 0));
	expect("D1 first", d1, "dg-one");
	expect("D1 second", d1, "dg-two");
	expect("D1 third", d1, "dg-three");
	{
		char buf[64];
		struct sockaddr_un from;
		socklen_t fl = sizeof(from);
		ssize_t r = recvfrom(d1, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from,
				     &fl);

		if (r != 8 || memcmp(buf, "dg-named", 8))
			zdtm_fail("D1 fourth: read %zd bytes (errno %d)", r, errno);
		else if (fl != offsetof(struct sockaddr_un, sun_path) + 1 + strlen(nname) ||
			 from.sun_path[0] || memcmp(from.sun_path + 1, nname, strlen(nname)))
			zdtm_fail("D1 fourth: the sender is not N");
	}
	if (strcmp(name_of(d2, 1), d1path))
		zdtm_fail("d2 is connected to \"%s\"", name_of(d2, 1));
	put(d2, "dg-four");
	expect("D1 after", d1, "dg-four");

	if (strcmp(name_of(d3, 0), d3path))
		zdtm_fail("D3 is bound to \"%s\"", name_of(d3, 0));
	if (stat(d3path, &st) == 0 || errno != ENOENT)
		zdtm_fail("D3's deleted socket file is back");

	if (strcmp(name_of(u, 0), "") || getpeername(u, (struct sockaddr *)&a,
						      &(socklen_t){ sizeof(a) }) != -1 ||
	    errno != ENOTCONN)
		zdtm_fail("U is named \"%s\" or connected", name_of(u, 0));
	if (strcmp(name_of(b, 0) + 1, bname))
		zdtm_fail("B is bound to \"%s\"", name_of(b, 0));
	zdtm_pass_or_fail();
}

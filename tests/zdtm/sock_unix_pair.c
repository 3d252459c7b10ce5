/*
 * sock_unix_pair: unix socketpairs of the three types with data queued in both
 * directions, and their options.
 *
 * For each of SOCK_STREAM, SOCK_DGRAM and SOCK_SEQPACKET, a socketpair (a, b):
 *   a -> b: messages of 1, 700, 3000 and 40000 bytes (patterned);
 *   b -> a: messages of 5 and 1234 bytes;
 *   a: O_NONBLOCK, SO_PASSCRED, SO_SNDBUF 100000 and SO_RCVBUF 150000;
 *   b: SO_PEEK_OFF 0 on the stream pair, where 2 bytes were peeked before READY
 *      (so the offset is 2).
 * Plus a stream pair whose b end received 300 KiB in chunks (a has a large
 * SO_SNDBUF) to queue more than the default buffer.
 * On SIGTERM: the type and options are unchanged, the two ends are still each
 * other's peer, every message comes out exactly once, in order, with its
 * boundaries (datagram and seqpacket) or as the same byte stream (stream),
 * then nothing more (EAGAIN); a message sent now in each direction arrives.
 * Nothing here is consumed before the checks, so the original, left running,
 * passes as well.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define BIG (300 * 1024)

static const int types[] = { SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET };
static const char *tnames[] = { "stream", "dgram", "seqpacket" };
static const size_t a2b[] = { 1, 700, 3000, 40000 };
static const size_t b2a[] = { 5, 1234 };

static uint8_t buf[BIG + 4096];
static uint8_t want[BIG + 4096];

struct pair {
	int a, b;
	int afl, bfl;
	int asnd, arcv;
};

static struct pair pairs[3];
static int big[2];

static int opt(int fd, int name)
{
	int v = -7;
	socklen_t l = sizeof(v);

	if (getsockopt(fd, SOL_SOCKET, name, &v, &l))
		return -7;
	return v;
}

static void send_all(int fd, const uint8_t *p, size_t n, const char *what)
{
	while (n) {
		ssize_t r = send(fd, p, n, MSG_DONTWAIT);

		if (r <= 0)
			zdtm_die("send %s: %m", what);
		p += r;
		n -= r;
	}
}

/* Reads everything queued on fd (non-blocking) and compares it with the messages. */
static void check_queue(const char *what, int fd, int type, const size_t *sizes, int n,
			uint64_t seed)
{
	int fl = fcntl(fd, F_GETFL);
	size_t total = 0, got = 0;
	ssize_t r;

	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	for (int i = 0; i < n; i++) {
		zdtm_fill(want + total, sizes[i], seed + i);
		total += sizes[i];
	}
	if (type == SOCK_STREAM) {
		while ((r = recv(fd, buf + got, sizeof(buf) - got, 0)) > 0)
			got += r;
		if (got != total || memcmp(buf, want, total))
			zdtm_fail("%s: %zu bytes came out, expected %zu (or they differ)", what, got,
				  total);
	} else {
		size_t off = 0;

		for (int i = 0; i < n; i++) {
			r = recv(fd, buf, sizeof(buf), 0);
			if (r != (ssize_t)sizes[i] || memcmp(buf, want + off, sizes[i])) {
				zdtm_fail("%s: message %d: %zd bytes (errno %d), expected %zu", what, i,
					  r, errno, sizes[i]);
				break;
			}
			off += sizes[i];
		}
	}
	r = recv(fd, buf, sizeof(buf), 0);
	if (r != -1 || errno != EAGAIN)
		zdtm_fail("%s: more data than sent: recv returned %zd (errno %d)", what, r, errno);
	fcntl(fd, F_SETFL, fl);
}

static void check_peers(const char *what, int a, int b)
{
	struct stat sa, sb;
	char x = 'x';

	if (fstat(a, &sa) || fstat(b, &sb) || !S_ISSOCK(sa.st_mode) || !S_ISSOCK(sb.st_mode))
		zdtm_fail("%s: not sockets", what);
	if (send(a, &x, 1, MSG_DONTWAIT) != 1 || recv(b, buf, 10, MSG_DONTWAIT) != 1 ||
	    buf[0] != 'x')
		zdtm_fail("%s: a byte sent from a now does not reach b", what);
	x = 'y';
	if (send(b, &x, 1, MSG_DONTWAIT) != 1 || recv(a, buf, 10, MSG_DONTWAIT) != 1 ||
	    buf[0] != 'y')
		zdtm_fail("%s: a byte sent from b now does not reach a", what);
}

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	for (int t = 0; t < 3; t++) {
		struct pair *p = &pairs[t];
		int fds[2], one = 1, snd = 100000, rcv = 150000;

		if (socketpair(AF_UNIX, types[t], 0, fds))
			zdtm_die("socketpair %s: %m", tnames[t]);
		p->a = fds[0];
		p->b = fds[1];
		if (setsockopt(p->a, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) ||
		    setsockopt(p->a, SOL_SOCKET, SO_SNDBUF, &snd, sizeof(snd)) ||
		    setsockopt(p->a, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)))
			zdtm_die("setsockopt: %m");
		for (int i = 0; i < 4; i++) {
			zdtm_fill(buf, a2b[i], 100 * t + i);
			send_all(p->a, buf, a2b[i], "a2b");
		}
		for (int i = 0; i < 2; i++) {
			zdtm_fill(buf, b2a[i], 100 * t + 50 + i);
			send_all(p->b, buf, b2a[i], "b2a");
		}
		fcntl(p->a, F_SETFL, O_NONBLOCK);
		if (types[t] == SOCK_STREAM) {
			int zero = 0;

			if (setsockopt(p->b, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) ||
			    recv(p->b, buf, 2, MSG_PEEK) != 2)
				zdtm_die("SO_PEEK_OFF: %m");
		}
		p->afl = fcntl(p->a, F_GETFL);
		p->bfl = fcntl(p->b, F_GETFL);
		p->asnd = opt(p->a, SO_SNDBUF);
		p->arcv = opt(p->a, SO_RCVBUF);
	}
	{
		int snd = 1 << 20;
		size_t off = 0;

		if (socketpair(AF_UNIX, SOCK_STREAM, 0, big) ||
		    setsockopt(big[0], SOL_SOCKET, SO_SNDBUFFORCE, &snd, sizeof(snd)))
			zdtm_die("big pair: %m");
		zdtm_fill(want, BIG, 999);
		while (off < BIG) {
			size_t n = 1 + zdtm_mix64(off) % 20000;

			if (n > BIG - off)
				n = BIG - off;
			send_all(big[0], want + off, n, "big");
			off += n;
		}
	}

	zdtm_ready();
	zdtm_wait_check();

	for (int t = 0; t < 3; t++) {
		struct pair *p = &pairs[t];
		char what[64];

		if (opt(p->a, SO_TYPE) != types[t] || opt(p->b, SO_TYPE) != types[t])
			zdtm_fail("%s: SO_TYPE changed", tnames[t]);
		if (opt(p->a, SO_PASSCRED) != 1 || opt(p->b, SO_PASSCRED) != 0)
			zdtm_fail("%s: SO_PASSCRED %d/%d", tnames[t], opt(p->a, SO_PASSCRED),
				  opt(p->b, SO_PASSCRED));
		if (opt(p->a, SO_SNDBUF) != p->asnd || opt(p->a, SO_RCVBUF) != p->arcv)
			zdtm_fail("%s: SO_SNDBUF %d (was %d), SO_RCVBUF %d (was %d)", tnames[t],
				  opt(p->a, SO_SNDBUF), p->asnd, opt(p->a, SO_RCVBUF), p->arcv);
		if (fcntl(p->a, F_GETFL) != p->afl || fcntl(p->b, F_GETFL) != p->bfl)
			zdtm_fail("%s: F_GETFL changed", tnames[t]);
		if (types[t] == SOCK_STREAM) {
			if (opt(p->b, SO_PEEK_OFF) != 2)
				zdtm_fail("stream: SO_PEEK_OFF %d, expected 2", opt(p->b, SO_PEEK_OFF));
			int off = -1;

			setsockopt(p->b, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off));
		} else if (opt(p->b, SO_PEEK_OFF) != -1) {
			zdtm_fail("%s: SO_PEEK_OFF %d, expected -1", tnames[t], opt(p->b, SO_PEEK_OFF));
		}
		snprintf(what, sizeof(what), "%s a->b", tnames[t]);
		check_queue(what, p->b, types[t], a2b, 4, 100 * t);
		snprintf(what, sizeof(what), "%s b->a", tnames[t]);
		check_queue(what, p->a, types[t], b2a, 2, 100 * t + 50);
		check_peers(tnames[t], p->a, p->b);
	}
	{
		size_t big_size = BIG;

		/* one "message" of BIG bytes with seed 999 */
		check_queue("big stream", big[1], SOCK_STREAM, &big_size, 1, 999);
		check_peers("big stream", big[0], big[1]);
	}
	zdtm_pass_or_fail();
}

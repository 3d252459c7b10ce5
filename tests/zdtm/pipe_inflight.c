/*
 * pipe_inflight: pipes with unread data in them.
 *
 *   A: capacity raised to 256 KiB with F_SETPIPE_SZ, 100 KiB of
 *      sequenced data written (in chunks of varying size) and not read
 *   B: default capacity, read end O_NONBLOCK, 1000 bytes in it
 * Both ends of both pipes stay open in the process.  On SIGTERM: the
 * capacities (F_GETPIPE_SZ) and all four F_GETFL values must be
 * unchanged and both ends of a pipe must still be the same pipe (same
 * inode); all data must come out in order and nothing more (B must
 * return EAGAIN when empty, as it is non-blocking); a byte written after
 * restore must come out of the read end; after the write end is closed
 * the read end must report EOF.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define A_SIZE (100 * 1024)
#define A_CAP (256 * 1024)
#define B_SIZE 1000

static uint8_t buf[A_SIZE + 4096];	/* room to notice extra data */

static void check_pipe(const char *name, int p[2], int cap, const int fl[2], size_t size,
		       uint64_t seed)
{
	struct stat s0, s1;
	size_t got = 0;
	ssize_t r = 0;

	if (fcntl(p[0], F_GETPIPE_SZ) != cap)
		zdtm_fail("pipe %s: capacity %d, expected %d", name, fcntl(p[0], F_GETPIPE_SZ), cap);
	for (int i = 0; i < 2; i++)
		if (fcntl(p[i], F_GETFL) != fl[i])
			zdtm_fail("pipe %s: %s end F_GETFL %#o, expected %#o", name,
				  i ? "write" : "read", fcntl(p[i], F_GETFL), fl[i]);
	if (fstat(p[0], &s0) || fstat(p[1], &s1) || !S_ISFIFO(s0.st_mode) ||
	    s0.st_ino != s1.st_ino || s0.st_dev != s1.st_dev)
		zdtm_fail("pipe %s: fds %d and %d are not the two ends of one pipe", name, p[0], p[1]);

	/* the data, in order, and nothing more */
	fcntl(p[0], F_SETFL, fl[0] | O_NONBLOCK);
	while (got < sizeof(buf) && (r = read(p[0], buf + got, sizeof(buf) - got)) > 0)
		got += r;
	if (got == sizeof(buf) || r == 0 || errno != EAGAIN)
		zdtm_fail("pipe %s: read returned %zd (errno %d) after %zu bytes", name, r, errno, got);
	if (got != size)
		zdtm_fail("pipe %s: %zu bytes in the pipe, expected %zu", name, got, size);
	else if (zdtm_check(buf, size, seed) != size)
		zdtm_fail("pipe %s: data differs at offset %zu", name, zdtm_check(buf, size, seed));
	fcntl(p[0], F_SETFL, fl[0]);
	/* a non-blocking read end must say EAGAIN by itself */
	if ((fl[0] & O_NONBLOCK) && (read(p[0], buf, 1) != -1 || errno != EAGAIN))
		zdtm_fail("pipe %s: empty non-blocking read end did not return EAGAIN", name);

	if (write(p[1], "z", 1) != 1 || read(p[0], buf, 2) != 1 || buf[0] != 'z')
		zdtm_fail("pipe %s: a byte written now does not come out", name);
	close(p[1]);
	fcntl(p[0], F_SETFL, fl[0] & ~O_NONBLOCK);	/* never block forever */
	if ((r = read(p[0], buf, 1)) != 0)
		zdtm_fail("pipe %s: no EOF after closing the write end (read returned %zd)", name, r);
}

int main(int argc, char **argv)
{
	int a[2], b[2], afl[2], bfl[2];
	size_t off = 0;

	zdtm_init(argc, argv);
	if (pipe(a) || pipe(b))
		zdtm_die("pipe: %m");
	if (fcntl(a[1], F_SETPIPE_SZ, A_CAP) != A_CAP)
		zdtm_die("F_SETPIPE_SZ: %m");
	zdtm_fill(buf, A_SIZE, 31);
	for (int i = 0; off < A_SIZE; i++) {
		size_t n = 1 + zdtm_mix64(i) % 8000;

		if (n > A_SIZE - off)
			n = A_SIZE - off;
		if (write(a[1], buf + off, n) != (ssize_t)n)
			zdtm_die("write A: %m");
		off += n;
	}
	if (fcntl(b[0], F_SETFL, O_NONBLOCK))
		zdtm_die("F_SETFL: %m");
	zdtm_fill(buf, B_SIZE, 32);
	if (write(b[1], buf, B_SIZE) != B_SIZE)
		zdtm_die("write B: %m");
	for (int i = 0; i < 2; i++) {
		afl[i] = fcntl(a[i], F_GETFL);
		bfl[i] = fcntl(b[i], F_GETFL);
	}
	int bcap = fcntl(b[0], F_GETPIPE_SZ);

	zdtm_ready();
	zdtm_wait_check();

	check_pipe("A", a, A_CAP, afl, A_SIZE, 31);
	check_pipe("B", b, bcap, bfl, B_SIZE, 32);
	zdtm_pass_or_fail();
}

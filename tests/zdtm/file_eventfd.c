/*
 * file_eventfd: eventfd counters, semaphore mode and flags.
 *
 *   A  eventfd(7, EFD_NONBLOCK), then 0x0ffffff000000000 written: a counter
 *      wider than the 32-bit initial value of eventfd()
 *   B  eventfd(3, EFD_SEMAPHORE | EFD_CLOEXEC), blocking
 *   C  eventfd(0, 0), also at fd 50 (dup2: one description)
 * On SIGTERM: F_GETFL/F_GETFD as set, fdinfo says eventfd and semaphore
 * 0/1; A is readable and one read returns the whole counter, then EAGAIN;
 * B returns 1 three times, then nothing; C is empty; C and fd 50 still
 * share the description (F_SETFL on one shows on the other) and a value
 * written to one is read from the other.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define A_COUNT (7 + 0x0ffffff000000000ULL)

/* 1 if fdinfo of fd has a line starting with key whose value is want */
static int fdinfo_is(int fd, const char *key, const char *want)
{
	char path[64], buf[4096], *p;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n < 0)
		return 0;
	buf[n] = 0;
	p = strstr(buf, key);
	if (!p)
		return 0;
	p += strlen(key);
	while (*p == ' ' || *p == '\t' || *p == ':')
		p++;
	return strncmp(p, want, strlen(want)) == 0 && (p[strlen(want)] == '\n' || !p[strlen(want)]);
}

static int readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void check_link(int fd)
{
	char path[64], l[128];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, l, sizeof(l) - 1);
	l[n > 0 ? n : 0] = 0;
	if (strcmp(l, "anon_inode:[eventfd]"))
		zdtm_fail("fd %d is %s, expected anon_inode:[eventfd]", fd, l);
}

int main(int argc, char **argv)
{
	int a, b, c;
	uint64_t v;

	zdtm_init(argc, argv);
	a = eventfd(7, EFD_NONBLOCK);
	b = eventfd(3, EFD_SEMAPHORE | EFD_CLOEXEC);
	c = eventfd(0, 0);
	if (a < 0 || b < 0 || c < 0)
		zdtm_die("eventfd: %m");
	v = 0x0ffffff000000000ULL;
	if (write(a, &v, 8) != 8)
		zdtm_die("write eventfd: %m");
	if (dup2(c, 50) != 50)
		zdtm_die("dup2: %m");

	zdtm_ready();
	zdtm_wait_check();

	check_link(a);
	check_link(b);
	check_link(c);
	if ((fcntl(a, F_GETFL) & (O_NONBLOCK | O_ACCMODE)) != (O_NONBLOCK | O_RDWR))
		zdtm_fail("A: F_GETFL %#o, expected O_RDWR|O_NONBLOCK", fcntl(a, F_GETFL));
	if (fcntl(b, F_GETFL) & O_NONBLOCK)
		zdtm_fail("B: O_NONBLOCK appeared");
	if (fcntl(a, F_GETFD) != 0 || fcntl(b, F_GETFD) != FD_CLOEXEC || fcntl(c, F_GETFD) != 0)
		zdtm_fail("F_GETFD: A %d B %d C %d, expected 0, 1, 0", fcntl(a, F_GETFD),
			  fcntl(b, F_GETFD), fcntl(c, F_GETFD));
	if (!fdinfo_is(a, "eventfd-semaphore", "0") || !fdinfo_is(b, "eventfd-semaphore", "1"))
		zdtm_fail("fdinfo: eventfd-semaphore is not 0 for A and 1 for B");

	/* A: the whole 64-bit counter at once */
	if (!readable(a))
		zdtm_fail("A: not readable");
	if (read(a, &v, 8) != 8)
		zdtm_fail("A: read: %m");
	else if (v != A_COUNT)
		zdtm_fail("A: counter %#llx, expected %#llx", (unsigned long long)v,
			  (unsigned long long)A_COUNT);
	if (read(a, &v, 8) != -1 || errno != EAGAIN)
		zdtm_fail("A: second read did not fail with EAGAIN");

	/* B: a semaphore of 3 */
	for (int i = 0; i < 3; i++) {
		v = 0;
		if (!readable(b) || read(b, &v, 8) != 8 || v != 1)
			zdtm_fail("B: read %d returned %llu, expected 1", i, (unsigned long long)v);
	}
	if (readable(b))
		zdtm_fail("B: still readable after 3 reads");

	/* C: empty, one description with fd 50 */
	if (readable(c) || readable(50))
		zdtm_fail("C: readable, expected an empty counter");
	fcntl(c, F_SETFL, O_NONBLOCK);
	if (!(fcntl(50, F_GETFL) & O_NONBLOCK))
		zdtm_fail("C: fd %d and fd 50 do not share their description", c);
	v = 42;
	if (write(c, &v, 8) != 8 || read(50, &v, 8) != 8 || v != 42)
		zdtm_fail("C: 42 written to fd %d did not come out of fd 50", c);
	zdtm_pass_or_fail();
}

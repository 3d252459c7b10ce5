/*
 * file_timerfd: timerfds on several clocks, armed, periodic, expired.
 *
 *   A  CLOCK_MONOTONIC, relative, 100 s, O_NONBLOCK
 *   B  CLOCK_MONOTONIC, periodic: first expiry after 10 ms, then every
 *      3600 s; it expires once before READY and is not read (1 tick)
 *   C  CLOCK_REALTIME, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, at
 *      now + 1000 s (wall clock), FD_CLOEXEC
 *   D  CLOCK_BOOTTIME, one-shot 10 ms, expired before READY, not read
 *   E  CLOCK_MONOTONIC, every 20 ms, expiring all the time
 *   F  CLOCK_REALTIME, never armed
 * On SIGTERM: the fdinfo clockid and settime flags; A: 0 < time left
 * <= 100 s and not less than 100 s - elapsed - 1 s; B: one tick to read,
 * time left in (0, 3600 s], interval 3600 s; C: its deadline is still the
 * wall-clock time it was set to (time left = deadline - now, +- 1 s); D: one
 * tick, then disarmed; E: at least one tick, interval 20 ms; F: disarmed,
 * nothing to read.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL

static int64_t ts_ns(const struct timespec *t)
{
	return (int64_t)t->tv_sec * NS + t->tv_nsec;
}

static int64_t now_ns(clockid_t c)
{
	struct timespec t;

	clock_gettime(c, &t);
	return ts_ns(&t);
}

/* the value of "key: value" in fdinfo of fd, or "" */
static const char *fdinfo_value(int fd, const char *key)
{
	static char buf[4096];
	char path[64], *p, *e;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	p = strstr(buf, key);
	if (!p)
		return "";
	p += strlen(key);
	while (*p == ':' || *p == ' ' || *p == '\t')
		p++;
	e = strchr(p, '\n');
	if (e)
		*e = 0;
	return p;
}

static void check_fdinfo(const char *name, int fd, const char *clockid, const char *flags)
{
	char c[32], f[32];

	snprintf(c, sizeof(c), "%s", fdinfo_value(fd, "clockid"));
	snprintf(f, sizeof(f), "%s", fdinfo_value(fd, "settime flags"));
	if (strcmp(c, clockid) || strcmp(f, flags))
		zdtm_fail("%s: fdinfo clockid %s settime flags %s, expected %s and %s", name, c, f,
			  clockid, flags);
}

/* ticks waiting on fd (0 if none), without blocking */
static uint64_t ticks(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	uint64_t t = 0;

	if (poll(&p, 1, 0) != 1)
		return 0;
	if (read(fd, &t, 8) != 8)
		return 0;
	return t;
}

int main(int argc, char **argv)
{
	int a, b, c, d, e, f;
	int64_t t0, c_deadline, elapsed;
	struct itimerspec its;
	struct timespec rt;

	zdtm_init(argc, argv);
	a = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	b = timerfd_create(CLOCK_MONOTONIC, 0);
	c = timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC);
	d = timerfd_create(CLOCK_BOOTTIME, 0);
	e = timerfd_create(CLOCK_MONOTONIC, 0);
	f = timerfd_create(CLOCK_REALTIME, 0);
	if (a < 0 || b < 0 || c < 0 || d < 0 || e < 0 || f < 0)
		zdtm_die("timerfd_create: %m");
	t0 = zdtm_now_ns();

	its = (struct itimerspec){ { 0, 0 }, { 100, 0 } };
	if (timerfd_settime(a, 0, &its, NULL))
		zdtm_die("settime A: %m");
	its = (struct itimerspec){ { 3600, 0 }, { 0, 10000000 } };
	if (timerfd_settime(b, 0, &its, NULL))
		zdtm_die("settime B: %m");
	clock_gettime(CLOCK_REALTIME, &rt);
	c_deadline = ts_ns(&rt) + 1000 * NS;
	its = (struct itimerspec){ { 0, 0 }, { rt.tv_sec + 1000, rt.tv_nsec } };
	if (timerfd_settime(c, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &its, NULL))
		zdtm_die("settime C: %m");
	its = (struct itimerspec){ { 0, 0 }, { 0, 10000000 } };
	if (timerfd_settime(d, 0, &its, NULL))
		zdtm_die("settime D: %m");
	its = (struct itimerspec){ { 0, 20000000 }, { 0, 20000000 } };
	if (timerfd_settime(e, 0, &its, NULL))
		zdtm_die("settime E: %m");
	usleep(50000);	/* B and D expire */

	zdtm_ready();
	zdtm_wait_check();
	elapsed = zdtm_now_ns() - t0;

	check_fdinfo("A", a, "1", "00");
	check_fdinfo("B", b, "1", "00");
	check_fdinfo("C", c, "0", "03");
	check_fdinfo("D", d, "7", "00");
	check_fdinfo("E", e, "1", "00");
	check_fdinfo("F", f, "0", "00");
	if (!(fcntl(a, F_GETFL) & O_NONBLOCK) || (fcntl(b, F_GETFL) & O_NONBLOCK))
		zdtm_fail("F_GETFL: O_NONBLOCK not only on A");
	if (fcntl(c, F_GETFD) != FD_CLOEXEC || fcntl(a, F_GETFD) != 0)
		zdtm_fail("F_GETFD: FD_CLOEXEC not only on C");

	/* A */
	timerfd_gettime(a, &its);
	if (ts_ns(&its.it_value) <= 0 || ts_ns(&its.it_value) > 100 * NS ||
	    ts_ns(&its.it_value) < 100 * NS - elapsed - NS || ts_ns(&its.it_interval) != 0)
		zdtm_fail("A: %lld ns left (interval %lld), expected (%lld, %lld]",
			  (long long)ts_ns(&its.it_value), (long long)ts_ns(&its.it_interval),
			  (long long)(100 * NS - elapsed - NS), 100 * NS);
	if (read(a, &(uint64_t){ 0 }, 8) != -1 || errno != EAGAIN)
		zdtm_fail("A: read did not fail with EAGAIN");

	/* B */
	if (ticks(b) != 1)
		zdtm_fail("B: not exactly one tick to read");
	timerfd_gettime(b, &its);
	if (ts_ns(&its.it_value) <= 0 || ts_ns(&its.it_value) > 3600 * NS ||
	    ts_ns(&its.it_interval) != 3600 * NS)
		zdtm_fail("B: %lld ns left, interval %lld ns, expected (0, 3600 s] and 3600 s",
			  (long long)ts_ns(&its.it_value), (long long)ts_ns(&its.it_interval));

	/* C: the wall-clock deadline is kept */
	timerfd_gettime(c, &its);
	{
		int64_t want = c_deadline - now_ns(CLOCK_REALTIME), got = ts_ns(&its.it_value);

		if (got <= 0 || got > want + NS || got < want - NS)
			zdtm_fail("C: %lld ns left, expected %lld (deadline kept) +- 1 s",
				  (long long)got, (long long)want);
	}
	if (ticks(c) != 0)
		zdtm_fail("C: has ticks");

	/* D */
	if (ticks(d) != 1)
		zdtm_fail("D: not exactly one tick to read");
	timerfd_gettime(d, &its);
	if (ts_ns(&its.it_value) != 0 || ts_ns(&its.it_interval) != 0)
		zdtm_fail("D: armed again (%lld ns left)", (long long)ts_ns(&its.it_value));
	if (ticks(d) != 0)
		zdtm_fail("D: a second tick");

	/* E: always expiring */
	usleep(30000);
	if (ticks(e) < 1)
		zdtm_fail("E: no tick");
	timerfd_gettime(e, &its);
	if (ts_ns(&its.it_interval) != 20000000)
		zdtm_fail("E: interval %lld ns, expected 20 ms", (long long)ts_ns(&its.it_interval));

	/* F */
	timerfd_gettime(f, &its);
	if (ts_ns(&its.it_value) || ts_ns(&its.it_interval) || ticks(f))
		zdtm_fail("F: armed or ticking");
	zdtm_pass_or_fail();
}

/*
 * sleep_nanosleep: a process sleeping in nanosleep()/clock_nanosleep().
 *
 * After READY the test loops: a relative nanosleep() of 500 ms, then a
 * clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) to a deadline 300 ms
 * ahead.  The dump will usually catch it inside one of these sleeps; the
 * engine must restart the interrupted sleep transparently.  Checked:
 *  - no call fails, except with EINTR once SIGTERM has arrived
 *    (an EINTR while zdtm_stop is still 0 means the restore leaked an
 *    interruption to the program);
 *  - the absolute sleep never returns before its deadline;
 *  - a relative sleep that returns 0 slept at least (roughly) 500 ms;
 *  - the remaining time reported on EINTR is not more than requested.
 */
#include "zdtm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define REL_NS 500000000LL
#define ABS_NS 300000000LL
#define SLACK_NS 1000000LL

static struct {
	long rounds, bad;
	char first[256];
} st;

static void bad(const char *what, long long a, long long b)
{
	if (!st.bad++)
		snprintf(st.first, sizeof(st.first), "%s (%lld, %lld)", what, a, b);
}

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	zdtm_ready();

	while (!zdtm_stop) {
		struct timespec req = { 0, REL_NS }, rem = { 0, 0 }, dl;
		int64_t t0 = zdtm_now_ns(), t1;
		int r;

		r = nanosleep(&req, &rem);
		t1 = zdtm_now_ns();
		if (r) {
			if (errno != EINTR)
				bad("nanosleep failed: errno, stop", errno, zdtm_stop);
			else if (!zdtm_stop)
				bad("nanosleep: EINTR without SIGTERM after ns", t1 - t0, 0);
			else if (rem.tv_sec > 0 || rem.tv_nsec > REL_NS)
				bad("nanosleep: remaining time larger than requested",
				    rem.tv_sec, rem.tv_nsec);
			break;
		}
		if (t1 - t0 < REL_NS - SLACK_NS)
			bad("nanosleep returned early: slept ns of", t1 - t0, REL_NS);

		t0 = zdtm_now_ns() + ABS_NS;
		dl.tv_sec = t0 / 1000000000;
		dl.tv_nsec = t0 % 1000000000;
		r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl, NULL);
		t1 = zdtm_now_ns();
		if (r) {
			if (r != EINTR)
				bad("clock_nanosleep failed: error, stop", r, zdtm_stop);
			else if (!zdtm_stop)
				bad("clock_nanosleep: EINTR without SIGTERM, ns before deadline",
				    t0 - t1, 0);
			break;
		}
		if (t1 < t0)
			bad("clock_nanosleep(TIMER_ABSTIME) returned ns before the deadline",
			    t0 - t1, 0);
		st.rounds++;
	}

	if (st.bad)
		zdtm_fail("%ld problems in %ld rounds, first: %s", st.bad, st.rounds, st.first);
	zdtm_pass_or_fail();
}

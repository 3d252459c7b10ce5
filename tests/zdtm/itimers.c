/*
 * itimers: the three interval timers.
 *
 *   ITIMER_REAL     value 100 s, interval 50 s
 *   ITIMER_VIRTUAL  value 200 s, interval 20 s
 *   ITIMER_PROF     value 300 s, interval 30 s
 * None can expire during the test.  On SIGTERM getitimer() must show each
 * timer still armed: 0 < value <= the value set (+ one tick for the CPU
 * time timers, which the kernel rounds up), and for ITIMER_REAL
 * (which runs in wall-clock time) value >= set - elapsed time - 1 s; the
 * intervals must be exactly the ones set (not reset to 0).
 */
#include "zdtm.h"

#include <sys/time.h>

#define TICK_SLACK_US 20000	/* > one jiffy for HZ >= 100 */

static const struct {
	int which;
	const char *name;
	long value, interval;
} timers[] = {
	{ ITIMER_REAL, "ITIMER_REAL", 100, 50 },
	{ ITIMER_VIRTUAL, "ITIMER_VIRTUAL", 200, 20 },
	{ ITIMER_PROF, "ITIMER_PROF", 300, 30 },
};

static int64_t tv_us(const struct timeval *tv)
{
	return (int64_t)tv->tv_sec * 1000000 + tv->tv_usec;
}

int main(int argc, char **argv)
{
	int64_t t0, elapsed_us;

	zdtm_init(argc, argv);
	t0 = zdtm_now_ns();
	for (int i = 0; i < 3; i++) {
		struct itimerval it = { { timers[i].interval, 0 }, { timers[i].value, 0 } };

		if (setitimer(timers[i].which, &it, NULL))
			zdtm_die("setitimer(%s): %m", timers[i].name);
	}

	zdtm_ready();
	zdtm_wait_check();
	elapsed_us = (zdtm_now_ns() - t0) / 1000;

	for (int i = 0; i < 3; i++) {
		struct itimerval it;
		int64_t v, set = timers[i].value * 1000000LL;

		if (getitimer(timers[i].which, &it)) {
			zdtm_fail("getitimer(%s): %m", timers[i].name);
			continue;
		}
		v = tv_us(&it.it_value);
		/* the kernel adds one tick to a CPU timer's value when it is set */
		if (timers[i].which != ITIMER_REAL)
			set += TICK_SLACK_US;
		if (v <= 0 || v > set)
			zdtm_fail("%s: value %lld us, expected (0, %lld]", timers[i].name, (long long)v,
				  (long long)set);
		if (timers[i].which == ITIMER_REAL && v < set - elapsed_us - 1000000)
			zdtm_fail("%s: value %lld us, but only %lld us have passed since it was set "
				  "to %lld us", timers[i].name, (long long)v, (long long)elapsed_us,
				  (long long)set);
		if (tv_us(&it.it_interval) != timers[i].interval * 1000000LL)
			zdtm_fail("%s: interval %lld us, expected %lld us", timers[i].name,
				  (long long)tv_us(&it.it_interval),
				  (long long)timers[i].interval * 1000000LL);
	}
	zdtm_pass_or_fail();
}

/*
 * sleep_pause: a process blocked in pause().
 *
 * After READY the test calls pause() in a loop.  pause() may only return
 * -1/EINTR, and only after a signal handler ran: each return is checked
 * against the counts of SIGTERM and SIGALRM handler runs.  A pause() that
 * returns although no handler ran (e.g. the restore made the interrupted
 * syscall return -EINTR/-ERESTARTNOHAND to the program) is a failure.
 * A periodic SIGALRM (1 s, ITIMER_REAL) wakes pause() legitimately; it
 * also closes the window where SIGTERM arrives between the zdtm_stop
 * test and the pause() call, which would otherwise hang the test.
 */
#include "zdtm.h"

#include <errno.h>
#include <stdio.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

int main(int argc, char **argv)
{
	struct itimerval it = { { 1, 0 }, { 1, 0 } };
	struct sigaction sa = { .sa_handler = on_alarm };
	long rounds = 0, bad = 0;
	char first[200] = "";

	zdtm_init(argc, argv);
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL) || setitimer(ITIMER_REAL, &it, NULL))
		zdtm_die("SIGALRM setup: %m");
	zdtm_ready();

	while (!zdtm_stop) {
		int handlers = alarms + zdtm_sigterm_count, r, e;

		r = pause();
		e = errno;
		rounds++;
		if (r != -1 || e != EINTR) {
			if (!bad++)
				snprintf(first, sizeof(first), "pause() returned %d, errno %d", r, e);
		} else if (alarms + zdtm_sigterm_count == handlers) {
			if (!bad++)
				snprintf(first, sizeof(first),
					 "pause() returned EINTR but no signal handler ran");
		}
	}
	if (bad)
		zdtm_fail("%ld bad returns from pause() in %ld calls, first: %s", bad, rounds, first);
	zdtm_pass_or_fail();
}

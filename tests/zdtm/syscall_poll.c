/*
 * syscall_poll: a process blocked in poll() with a timeout.
 *
 * After READY the test loops on poll() with a 1 s timeout on the read end
 * of a pipe that nobody writes to (the write end stays open, so there is
 * no POLLHUP either).  Each poll() must either time out (return 0, not
 * before the timeout elapsed) or, only once SIGTERM has arrived, fail
 * with EINTR.  Any event, any other error, or an EINTR without SIGTERM
 * (an interruption leaked by the restore) is a failure.
 */
#include "zdtm.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <unistd.h>

#define TIMEOUT_MS 1000

int main(int argc, char **argv)
{
	long rounds = 0, bad = 0;
	char first[200] = "";
	int pfd[2];

	zdtm_init(argc, argv);
	if (pipe(pfd))
		zdtm_die("pipe: %m");
	zdtm_ready();

	while (!zdtm_stop) {
		struct pollfd p = { .fd = pfd[0], .events = POLLIN };
		int64_t t0 = zdtm_now_ns(), dt;
		int r = poll(&p, 1, TIMEOUT_MS), e = errno;

		dt = zdtm_now_ns() - t0;
		rounds++;
		if (r < 0 && e == EINTR && zdtm_stop)
			break;
		if (r == 0 && dt >= (TIMEOUT_MS - 5) * 1000000LL)
			continue;
		if (!bad++)
			snprintf(first, sizeof(first),
				 "poll() returned %d (errno %d, revents %#x, stop %d) after %lld ms", r,
				 r < 0 ? e : 0, p.revents, zdtm_stop, (long long)dt / 1000000);
	}
	if (bad)
		zdtm_fail("%ld bad poll() results in %ld calls, first: %s", bad, rounds, first);
	zdtm_pass_or_fail();
}

/*
 * syscall_read_pipe: a process blocked in read() on an empty pipe.
 *
 * A periodic SIGALRM (ITIMER_REAL, every 1.5 s) runs an SA_RESTART
 * handler that writes the next byte of a sequence into the pipe.  The
 * main loop reads one byte at a time and checks the sequence: no byte may
 * be lost or duplicated, and read() may only fail with EINTR, and only
 * after SIGTERM (whose handler has no SA_RESTART).  The dump will catch
 * the process blocked in read(); the engine must restart the read
 * transparently and keep the pipe and the timer.  At the end the bytes
 * still in the pipe are drained and the totals compared.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static int pfd[2];
static volatile sig_atomic_t written;	/* bytes written by the handler */
static volatile sig_atomic_t write_errors;

static void on_alarm(int sig)
{
	unsigned char b = (unsigned char)(written * 7 + 1);
	int saved = errno;

	(void)sig;
	if (write(pfd[1], &b, 1) == 1)
		written++;
	else
		write_errors++;
	errno = saved;
}

int main(int argc, char **argv)
{
	struct itimerval it = { { 1, 500000 }, { 1, 500000 } };
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	long nread = 0, bad = 0;
	char first[200] = "";
	unsigned char b;
	ssize_t r;

	zdtm_init(argc, argv);
	if (pipe(pfd))
		zdtm_die("pipe: %m");
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL) || setitimer(ITIMER_REAL, &it, NULL))
		zdtm_die("SIGALRM setup: %m");
	zdtm_ready();

	while (!zdtm_stop) {
		r = read(pfd[0], &b, 1);
		if (r == 1) {
			if (b != (unsigned char)(nread * 7 + 1) && !bad++)
				snprintf(first, sizeof(first), "byte %ld is %#x, expected %#x", nread,
					 b, (unsigned char)(nread * 7 + 1));
			nread++;
		} else if (r < 0 && errno == EINTR && zdtm_stop) {
			break;
		} else if (!bad++) {
			snprintf(first, sizeof(first), "read() returned %zd, errno %d, stop %d", r,
				 errno, zdtm_stop);
		}
	}

	/* stop the timer, drain what is left */
	memset(&it, 0, sizeof(it));
	setitimer(ITIMER_REAL, &it, NULL);
	fcntl(pfd[0], F_SETFL, O_NONBLOCK);
	while ((r = read(pfd[0], &b, 1)) == 1) {
		if (b != (unsigned char)(nread * 7 + 1) && !bad++)
			snprintf(first, sizeof(first), "byte %ld is %#x (drain)", nread, b);
		nread++;
	}
	if (r != -1 || errno != EAGAIN)
		zdtm_fail("draining the pipe: read() returned %zd, errno %d", r, errno);
	if (bad)
		zdtm_fail("%ld bad reads, first: %s", bad, first);
	if (nread != written)
		zdtm_fail("read %ld bytes, the handler wrote %d", nread, written);
	if (write_errors)
		zdtm_fail("%d writes in the SIGALRM handler failed", write_errors);
	zdtm_pass_or_fail();
}

/*
 * itimer_frozen: an ITIMER_REAL with a 10 ms interval that expires while
 * the process is frozen.
 *
 * The process holds 64 MiB of patterned memory, so that a dump keeps it
 * frozen well over 10 ms.  The timer expires meanwhile: SIGALRM becomes
 * pending and getitimer() reads a zero value with the interval still set
 * (the kernel re-arms ITIMER_REAL only when the pending SIGALRM is taken).
 * A SIGALRM handler (SA_RESTART) counts the signals.
 *
 * On SIGTERM: getitimer() must still show the 10 ms interval, and SIGALRM
 * must keep coming: at least 10 more within 500 ms (50 are due).  The
 * memory pattern must be intact.
 */
#include "zdtm.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>

#define MEM_SIZE (64UL << 20)
#define INTERVAL_US 10000

static volatile unsigned long alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

int main(int argc, char **argv)
{
	struct itimerval it = { { 0, INTERVAL_US }, { 0, INTERVAL_US } };
	struct sigaction sa;
	unsigned long before, after;
	int64_t t0;
	void *mem;
	size_t bad;

	zdtm_init(argc, argv);
	mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		zdtm_die("mmap: %m");
	zdtm_fill(mem, MEM_SIZE, 77);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	if (sigaction(SIGALRM, &sa, NULL))
		zdtm_die("sigaction: %m");
	if (setitimer(ITIMER_REAL, &it, NULL))
		zdtm_die("setitimer: %m");
	while (alarms < 3)
		pause();

	zdtm_ready();
	zdtm_wait_check();

	if (getitimer(ITIMER_REAL, &it))
		zdtm_fail("getitimer: %m");
	else if (it.it_interval.tv_sec != 0 || it.it_interval.tv_usec != INTERVAL_US)
		zdtm_fail("ITIMER_REAL interval %ld.%06ld s, expected 0.%06d s",
			  (long)it.it_interval.tv_sec, (long)it.it_interval.tv_usec, INTERVAL_US);
	before = alarms;
	t0 = zdtm_now_ns();
	while (zdtm_now_ns() - t0 < 500000000LL) {
		struct timespec ts = { 0, 5000000 };

		while (nanosleep(&ts, &ts) && errno == EINTR)
			;
	}
	after = alarms;
	if (after - before < 10)
		zdtm_fail("%lu SIGALRMs in 500 ms after the check began (every 10 ms expected); "
			  "ITIMER_REAL value %ld.%06ld interval %ld.%06ld", after - before,
			  (long)it.it_value.tv_sec, (long)it.it_value.tv_usec,
			  (long)it.it_interval.tv_sec, (long)it.it_interval.tv_usec);
	bad = zdtm_check(mem, MEM_SIZE, 77);
	if (bad != MEM_SIZE)
		zdtm_fail("memory differs at offset %zu", bad);
	zdtm_pass_or_fail();
}

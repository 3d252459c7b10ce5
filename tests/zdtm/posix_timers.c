/*
 * posix_timers: POSIX timers (timer_create) with their ids.
 *
 *   T0  CLOCK_MONOTONIC, SIGUSR1 with value 1001, 100 s then every 7 s
 *   T1  CLOCK_REALTIME, SIGEV_NONE, 200 s
 *   T2  created and deleted: its id stays a gap
 *   T3  CLOCK_MONOTONIC, SIGRTMIN+2 with value 0xfeedbeef, every 100 ms
 *   T4  CLOCK_BOOTTIME, SIGEV_THREAD_ID (this thread), SIGUSR2, disarmed
 *   T5  CLOCK_PROCESS_CPUTIME_ID, SIGALRM, 1000 s of CPU time
 * On SIGTERM: /proc/self/timers lists exactly T0, T1, T3, T4 and T5 with
 * their ids, signals, values, notification and clocks; T2's id is unknown;
 * the times left and intervals are plausible (T0: <= 100 s and not less than
 * 100 s - elapsed - 1 s); T3 keeps delivering SIGRTMIN+2 with its value and
 * timer id (at least 3 in 500 ms, none with anything else); T4 is disarmed;
 * a new timer can be created.
 */
#include "zdtm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL

static volatile sig_atomic_t t3_good, t3_bad;
static int t3_id;

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (si->si_code == SI_TIMER && si->si_value.sival_ptr == (void *)0xfeedbeefUL &&
	    si->si_timerid == t3_id)
		t3_good++;
	else
		t3_bad++;
}

static int64_t ts_ns(const struct timespec *t)
{
	return (int64_t)t->tv_sec * NS + t->tv_nsec;
}

static int make(clockid_t clock, int notify, int sig, void *value, int64_t first, int64_t every)
{
	struct sigevent sev;
	struct itimerspec its = { { every / NS, every % NS }, { first / NS, first % NS } };
	timer_t t;

	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = notify;
	sev.sigev_signo = sig;
	sev.sigev_value.sival_ptr = value;
	if (notify == SIGEV_THREAD_ID)
		sev._sigev_un._tid = syscall(SYS_gettid);
	if (timer_create(clock, &sev, &t))
		zdtm_die("timer_create: %m");
	if (first && timer_settime(t, 0, &its, NULL))
		zdtm_die("timer_settime: %m");
	return (int)(intptr_t)t;
}

static timer_t tid(int id)
{
	return (timer_t)(intptr_t)id;
}

struct expect {
	int id;
	char signal[64];
	char notify[64];
	int clock;
};

static void check_proc(const struct expect *want, int n)
{
	char buf[8192], *line, *save = NULL;
	struct expect got[16];
	int k = -1;
	ssize_t len = zdtm_read_file("/proc/self/timers", buf, sizeof(buf) - 1);

	if (len < 0) {
		zdtm_fail("cannot read /proc/self/timers");
		return;
	}
	buf[len] = 0;
	memset(got, 0, sizeof(got));
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(line, "ID: ", 4) && k < 15)
			got[++k].id = atoi(line + 4);
		else if (k < 0)
			continue;
		else if (!strncmp(line, "signal: ", 8))
			snprintf(got[k].signal, sizeof(got[k].signal), "%s", line + 8);
		else if (!strncmp(line, "notify: ", 8))
			snprintf(got[k].notify, sizeof(got[k].notify), "%s", line + 8);
		else if (!strncmp(line, "ClockID: ", 9))
			got[k].clock = atoi(line + 9);
	}
	if (k + 1 != n)
		zdtm_fail("/proc/self/timers lists %d timers, expected %d", k + 1, n);
	for (int i = 0; i < n; i++) {
		int j;

		for (j = 0; j <= k; j++)
			if (got[j].id == want[i].id)
				break;
		if (j > k) {
			zdtm_fail("timer %d is not in /proc/self/timers", want[i].id);
			continue;
		}
		if (strcmp(got[j].signal, want[i].signal) || strcmp(got[j].notify, want[i].notify) ||
		    got[j].clock != want[i].clock)
			zdtm_fail("timer %d: signal %s notify %s clock %d, expected %s %s %d",
				  want[i].id, got[j].signal, got[j].notify, got[j].clock,
				  want[i].signal, want[i].notify, want[i].clock);
	}
}

static void check_time(const char *name, int id, int64_t lo, int64_t hi, int64_t interval)
{
	struct itimerspec its;

	if (timer_gettime(tid(id), &its)) {
		zdtm_fail("%s (id %d): timer_gettime: %m", name, id);
		return;
	}
	if (ts_ns(&its.it_value) < lo || ts_ns(&its.it_value) > hi ||
	    ts_ns(&its.it_interval) != interval)
		zdtm_fail("%s (id %d): %lld ns left, interval %lld ns; expected [%lld, %lld] and %lld",
			  name, id, (long long)ts_ns(&its.it_value),
			  (long long)ts_ns(&its.it_interval), (long long)lo, (long long)hi,
			  (long long)interval);
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	sigset_t block;
	int id[6], pid = getpid();
	int64_t t0, elapsed;
	struct expect want[5];
	timer_t extra;

	zdtm_init(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_rt;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGRTMIN + 2, &sa, NULL);
	/* the other timers must not kill us if they ever fire */
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGALRM);
	sigprocmask(SIG_BLOCK, &block, NULL);

	t0 = zdtm_now_ns();
	id[0] = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR1, (void *)1001, 100 * NS, 7 * NS);
	id[1] = make(CLOCK_REALTIME, SIGEV_NONE, 0, NULL, 200 * NS, 0);
	id[2] = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR1, NULL, 0, 0);
	t3_id = id[3] = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 2, (void *)0xfeedbeefUL,
			     NS / 10, NS / 10);
	id[4] = make(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGUSR2, NULL, 0, 0);
	id[5] = make(CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, SIGALRM, NULL, 1000 * NS, 0);
	if (timer_delete(tid(id[2])))
		zdtm_die("timer_delete: %m");

	zdtm_ready();
	zdtm_wait_check();
	elapsed = zdtm_now_ns() - t0;

	want[0] = (struct expect){ id[0], "", "", CLOCK_MONOTONIC };
	snprintf(want[0].signal, 64, "%d/%016lx", SIGUSR1, 1001UL);
	snprintf(want[0].notify, 64, "signal/pid.%d", pid);
	want[1] = (struct expect){ id[1], "", "", CLOCK_REALTIME };
	snprintf(want[1].signal, 64, "0/%016lx", 0UL);
	snprintf(want[1].notify, 64, "none/pid.%d", pid);
	want[2] = (struct expect){ id[3], "", "", CLOCK_MONOTONIC };
	snprintf(want[2].signal, 64, "%d/%016lx", SIGRTMIN + 2, 0xfeedbeefUL);
	snprintf(want[2].notify, 64, "signal/pid.%d", pid);
	want[3] = (struct expect){ id[4], "", "", CLOCK_BOOTTIME };
	snprintf(want[3].signal, 64, "%d/%016lx", SIGUSR2, 0UL);
	snprintf(want[3].notify, 64, "signal/tid.%d", pid);
	want[4] = (struct expect){ id[5], "", "", -6 /* this process's CPU clock */ };
	snprintf(want[4].signal, 64, "%d/%016lx", SIGALRM, 0UL);
	snprintf(want[4].notify, 64, "signal/pid.%d", pid);
	check_proc(want, 5);

	check_time("T0", id[0], 100 * NS - elapsed - NS, 100 * NS, 7 * NS);
	check_time("T1", id[1], 1, 200 * NS, 0);
	check_time("T3", id[3], 1, NS / 10, NS / 10);
	check_time("T4", id[4], 0, 0, 0);
	check_time("T5", id[5], 1, 1000 * NS, 0);
	{
		struct itimerspec its;

		if (timer_gettime(tid(id[2]), &its) != -1 || errno != EINVAL)
			zdtm_fail("T2 (id %d, deleted) exists", id[2]);
	}

	/* T3 keeps firing, with its value and id */
	t3_good = t3_bad = 0;
	for (int64_t end = zdtm_now_ns() + NS / 2; zdtm_now_ns() < end;)
		usleep(10000);
	if (t3_good < 3 || t3_bad)
		zdtm_fail("T3: %d good and %d bad signals in 500 ms, expected >= 3 and 0",
			  (int)t3_good, (int)t3_bad);

	if (timer_create(CLOCK_MONOTONIC, NULL, &extra))
		zdtm_fail("a new timer cannot be created: %m");
	else
		for (int i = 0; i < 6; i++)
			if (i != 2 && (int)(intptr_t)extra == id[i])
				zdtm_fail("a new timer got the id %d of T%d", id[i], i);
	zdtm_pass_or_fail();
}

/*
 * sched_prio: scheduling per thread, and the process attributes that come with it.
 *
 * Each thread sets up its own scheduling, then waits on a condition variable:
 *   main  SCHED_OTHER, nice 3, timer slack 123000 ns
 *   t1    SCHED_BATCH, nice 7
 *   t2    SCHED_IDLE, nice 2
 *   t3    SCHED_FIFO priority 10 with SCHED_RESET_ON_FORK, nice 4 underneath
 *   t4    SCHED_RR priority 5
 *   t5    SCHED_OTHER nice -5, bound to CPU 0, timer slack 777000 ns, PR_TSC_SIGSEGV,
 *         PR_MCE_KILL early
 * The process: oom_score_adj 321, PR_SET_THP_DISABLE, a membarrier registration
 * (MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED), the audit login uid 4242 (when it was unset at
 * start: it can be set once without privilege; the kernel keeps it per thread, and the main
 * thread sets it after the others exist, so theirs stays unset) and
 * PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN).
 *
 * After SIGTERM the main thread checks every thread's policy, priority, flags, nice value and
 * affinity from outside (sched_getattr, getpriority, sched_getaffinity by tid) and the process
 * attributes; each thread checks its own timer slack, TSC, MCE setting and login uid.
 */
#include "zdtm.h"

#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SCHED_FLAG_RESET_ON_FORK
#define SCHED_FLAG_RESET_ON_FORK 0x01
#endif
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif
#define MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED (1 << 4)
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)

/* struct sched_attr of the kernel (the first version, 48 bytes). */
struct zattr {
	uint32_t size;
	uint32_t policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
};

struct want {
	const char *name;
	int policy;
	int priority;
	int nice;
	int reset_on_fork;
	int cpu;		/* bound to this CPU only, or -1 */
	unsigned long slack;	/* 0: not checked */
	int tsc_sigsegv;
	int mce_early;
};

#define NT 6
static const struct want wants[NT] = {
	{ "main", SCHED_OTHER, 0, 3, 0, -1, 123000, 0, 0 },
	{ "t1", SCHED_BATCH, 0, 7, 0, -1, 0, 0, 0 },
	{ "t2", SCHED_IDLE, 0, 2, 0, -1, 0, 0, 0 },
	{ "t3", SCHED_FIFO, 10, 4, 1, -1, 0, 0, 0 },
	{ "t4", SCHED_RR, 5, 0, 0, -1, 0, 0, 0 },
	{ "t5", SCHED_OTHER, 0, -5, 0, 0, 777000, 1, 1 },
};

static pid_t tids[NT];
static long loginuids[NT];	/* each thread's own audit login uid */
static char msgs[NT][512];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int nready, go;

static void note(int i, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(int i, const char *fmt, ...)
{
	size_t used = strlen(msgs[i]);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msgs[i] + used, sizeof(msgs[i]) - used, fmt, ap);
	va_end(ap);
}

static long read_long(const char *path)
{
	char buf[64];
	ssize_t n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -99999;
	buf[n] = 0;
	return strtol(buf, NULL, 10);
}

/* Sets the calling thread up as wants[i]; returns an error text or NULL. */
static const char *setup(int i)
{
	const struct want *w = &wants[i];
	tids[i] = gettid();
	if (setpriority(PRIO_PROCESS, 0, w->nice))
		return "setpriority";
	struct zattr a = { .size = sizeof(a), .policy = w->policy, .priority = w->priority,
			   .nice = w->nice,
			   .flags = w->reset_on_fork ? SCHED_FLAG_RESET_ON_FORK : 0 };
	if (syscall(SYS_sched_setattr, 0, &a, 0))
		return "sched_setattr";
	if (w->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			return "sched_setaffinity";
	}
	if (w->slack && prctl(PR_SET_TIMERSLACK, w->slack, 0, 0, 0))
		return "PR_SET_TIMERSLACK";
	if (w->tsc_sigsegv && prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0))
		return "PR_SET_TSC";
	if (w->mce_early && prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0))
		return "PR_MCE_KILL";
	loginuids[i] = read_long("/proc/thread-self/loginuid");
	return NULL;
}

/* What the calling thread checks on itself. */
static void self_check(int i)
{
	const struct want *w = &wants[i];
	if (w->slack) {
		long s = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
		if (s != (long)w->slack)
			note(i, "[%s] timer slack %ld, expected %lu; ", w->name, s, w->slack);
	}
	int tsc = 0;
	if (prctl(PR_GET_TSC, &tsc, 0, 0, 0))
		note(i, "[%s] PR_GET_TSC: %s; ", w->name, strerror(errno));
	else if (tsc != (w->tsc_sigsegv ? PR_TSC_SIGSEGV : PR_TSC_ENABLE))
		note(i, "[%s] PR_GET_TSC %d; ", w->name, tsc);
	int mce = prctl(PR_MCE_KILL_GET, 0, 0, 0, 0);
	if (mce != (w->mce_early ? PR_MCE_KILL_EARLY : PR_MCE_KILL_DEFAULT))
		note(i, "[%s] PR_MCE_KILL_GET %d; ", w->name, mce);
	long lu = read_long("/proc/thread-self/loginuid");
	if (lu != loginuids[i])
		note(i, "[%s] loginuid %ld, expected %ld; ", w->name, lu, loginuids[i]);
}

static void *worker(void *arg)
{
	int i = (int)(intptr_t)arg;
	const char *err = setup(i);
	pthread_mutex_lock(&lock);
	if (err)
		note(i, "[%s] setup: %s: %s; ", wants[i].name, err, strerror(errno));
	nready++;
	pthread_cond_broadcast(&cond);
	while (!go)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	self_check(i);
	return NULL;
}

/* Checks thread i's scheduling from outside, by its tid. */
static void check_sched(int i)
{
	const struct want *w = &wants[i];
	struct zattr a = { 0 };
	if (syscall(SYS_sched_getattr, tids[i], &a, sizeof(a), 0)) {
		zdtm_fail("[%s] sched_getattr(%d): %s", w->name, tids[i], strerror(errno));
		return;
	}
	if ((int)a.policy != w->policy || (int)a.priority != w->priority)
		zdtm_fail("[%s] policy %u priority %u, expected %d and %d", w->name, a.policy,
			  a.priority, w->policy, w->priority);
	if (!!(a.flags & SCHED_FLAG_RESET_ON_FORK) != w->reset_on_fork)
		zdtm_fail("[%s] sched flags %#llx", w->name, (unsigned long long)a.flags);
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, tids[i]);
	if (nice != w->nice)
		zdtm_fail("[%s] nice %d, expected %d", w->name, nice, w->nice);
	cpu_set_t set, all;
	if (sched_getaffinity(tids[i], sizeof(set), &set)) {
		zdtm_fail("[%s] sched_getaffinity: %s", w->name, strerror(errno));
		return;
	}
	if (w->cpu >= 0) {
		if (CPU_COUNT(&set) != 1 || !CPU_ISSET(w->cpu, &set))
			zdtm_fail("[%s] bound to %d CPUs, expected CPU %d only", w->name,
				  CPU_COUNT(&set), w->cpu);
	} else if (sched_getaffinity(0, sizeof(all), &all) == 0 && tids[i] != gettid()) {
		/* The main thread runs on every CPU. */
		if (!CPU_EQUAL(&set, &all))
			zdtm_fail("[%s] affinity %d CPUs, not every CPU", w->name, CPU_COUNT(&set));
	}
}

static int write_str(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	int r = fputs(s, f) < 0;
	return fclose(f) || r ? -1 : 0;
}

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, &old);
	pthread_t th[NT];
	for (int i = 1; i < NT; i++)
		if (pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i))
			zdtm_die("pthread_create failed");
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	const char *err = setup(0);
	if (err)
		zdtm_die("main setup: %s: %s", err, strerror(errno));
	pthread_mutex_lock(&lock);
	while (nready < NT - 1)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	for (int i = 1; i < NT; i++)
		if (msgs[i][0])
			zdtm_die("%s", msgs[i]);

	if (write_str("/proc/self/oom_score_adj", "321"))
		zdtm_die("oom_score_adj: %s", strerror(errno));
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0))
		zdtm_die("PR_SET_THP_DISABLE: %s", strerror(errno));
	if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0))
		zdtm_die("membarrier register: %s", strerror(errno));
	long registrations = syscall(SYS_membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0);
	long loginuid = read_long("/proc/self/loginuid");
	if (loginuid == 4294967295L) {
		if (write_str("/proc/self/loginuid", "4242"))
			zdtm_die("loginuid: %s", strerror(errno));
		loginuid = 4242;
	}
	loginuids[0] = loginuid;
	if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0))
		zdtm_die("PR_SET_MDWE: %s", strerror(errno));
	zdtm_ready();

	zdtm_wait_check();

	for (int i = 0; i < NT; i++)
		check_sched(i);
	self_check(0);
	long v = read_long("/proc/self/oom_score_adj");
	if (v != 321)
		zdtm_fail("oom_score_adj %ld, expected 321", v);
	int thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
	if (thp != 1)
		zdtm_fail("PR_GET_THP_DISABLE %d, expected 1", thp);
	long reg = syscall(SYS_membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0);
	if (reg != registrations)
		zdtm_fail("membarrier registrations %#lx, expected %#lx", reg, registrations);
	v = read_long("/proc/self/loginuid");
	if (v != loginuid)
		zdtm_fail("loginuid %ld, expected %ld", v, loginuid);
	int mdwe = prctl(PR_GET_MDWE, 0, 0, 0, 0);
	if (mdwe != PR_MDWE_REFUSE_EXEC_GAIN)
		zdtm_fail("PR_GET_MDWE %d, expected %d", mdwe, PR_MDWE_REFUSE_EXEC_GAIN);

	pthread_mutex_lock(&lock);
	go = 1;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	for (int i = 1; i < NT; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < NT; i++)
		if (msgs[i][0])
			zdtm_fail("%s", msgs[i]);
	zdtm_pass_or_fail();
}

/*
 * thread_signals: per-thread signal state of a multi-threaded process.
 *
 * Three workers and the main thread each have
 *   - their own blocked mask (all different; every one blocks SIGTERM
 *     except the main thread's, and SIGWINCH),
 *   - their own pending, thread-directed signals, sent while blocked:
 *       w0: SIGUSR1 (pthread_kill)
 *       w1: SIGUSR2 (pthread_kill) and SIGRTMIN+2 twice (pthread_sigqueue,
 *           values 100 and 101)
 *       w2: SIGHUP (pthread_kill)
 *       main: SIGURG (raise)
 *     and there is one process-wide pending SIGWINCH (kill(getpid())),
 *   - their own sigaltstack (different sizes; the main thread has none),
 *   - their own name (pthread_setname_np; PR_SET_NAME for the main thread).
 *
 * After SIGTERM the main thread checks every thread's SigBlk, SigPnd and
 * ShdPnd in /proc/self/task/TID/status and its comm, then lets the
 * workers go.  Each thread checks its mask, sigpending(), sigaltstack()
 * and name itself, then unblocks its pending signals one by one: the
 * SA_SIGINFO|SA_ONSTACK handler must run in that thread, on that thread's
 * alternate stack, with the right si_code/si_pid/si_value, RT signals in
 * queue order, and no thread may get another thread's signal.  w2 also
 * unblocks SIGWINCH and must receive the process-wide one.
 */
#include "zdtm.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define NW 3
#define NTH (NW + 1)	/* index NW is the main thread */
#define NERR 8

struct tinfo {
	pthread_t th;
	pid_t tid;
	char name[16];
	sigset_t mask;		/* blocked */
	int pend[4];		/* thread-directed pending signals (0-terminated) */
	void *alt;		/* alternate stack, NULL = none */
	size_t altsize;
	volatile int ready;
	int nerr;
	char err[NERR][200];
};

static struct tinfo ti[NTH];
static pthread_mutex_t mx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int go;
/* nobody takes a signal before every thread has checked its pending set */
static pthread_barrier_t checked;

/* what the handler saw, per thread */
static __thread volatile int tl_count[65];
static __thread volatile int tl_code[65], tl_pid[65], tl_val[65][2];
static __thread volatile int tl_off_altstack;
static __thread void *tl_alt;
static __thread size_t tl_altsize;

#define TFAIL(t, ...)                                                          \
	do {                                                                   \
		if ((t)->nerr < NERR)                                          \
			snprintf((t)->err[(t)->nerr], sizeof((t)->err[0]), __VA_ARGS__); \
		(t)->nerr++;                                                   \
	} while (0)

static void on_sig(int sig, siginfo_t *si, void *uc)
{
	char here;
	int n = tl_count[sig];

	(void)uc;
	if (tl_alt && ((char *)&here < (char *)tl_alt ||
		       (char *)&here >= (char *)tl_alt + tl_altsize))
		tl_off_altstack++;
	if (n < 2)
		tl_val[sig][n] = si->si_value.sival_int;
	tl_code[sig] = si->si_code;
	tl_pid[sig] = si->si_pid;
	tl_count[sig] = n + 1;
}

static uint64_t set_bits(const sigset_t *s)
{
	uint64_t b = 0;

	for (int sig = 1; sig <= 64; sig++)
		if (sigismember(s, sig) == 1)
			b |= 1ULL << (sig - 1);
	return b;
}

static void setup_thread(struct tinfo *t)
{
	t->tid = gettid();
	if (t->alt) {
		stack_t ss = { .ss_sp = t->alt, .ss_size = t->altsize, .ss_flags = 0 };
		if (sigaltstack(&ss, NULL))
			zdtm_die("sigaltstack: %m");
		tl_alt = t->alt;
		tl_altsize = t->altsize;
	}
	if (pthread_setname_np(pthread_self(), t->name))
		zdtm_die("pthread_setname_np failed");
	if (pthread_sigmask(SIG_SETMASK, &t->mask, NULL))
		zdtm_die("pthread_sigmask failed");
}

/* each thread checks its own state ... */
static void check_state(struct tinfo *t)
{
	sigset_t cur, pend, expect_pend;
	stack_t ss;
	char name[32] = "";
	int r;

	if (gettid() != t->tid)
		TFAIL(t, "gettid() %d, was %d", (int)gettid(), (int)t->tid);
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	if (set_bits(&cur) != set_bits(&t->mask))
		TFAIL(t, "blocked mask %#" PRIx64 ", expected %#" PRIx64, set_bits(&cur),
		      set_bits(&t->mask));
	sigemptyset(&expect_pend);
	for (int i = 0; t->pend[i]; i++)
		sigaddset(&expect_pend, t->pend[i]);
	sigaddset(&expect_pend, SIGWINCH);	/* process-wide */
	sigpending(&pend);
	if (set_bits(&pend) != set_bits(&expect_pend))
		TFAIL(t, "sigpending() %#" PRIx64 ", expected %#" PRIx64, set_bits(&pend),
		      set_bits(&expect_pend));
	if (sigaltstack(NULL, &ss))
		TFAIL(t, "sigaltstack: %s", strerror(errno));
	else if (t->alt && (ss.ss_sp != t->alt || ss.ss_size != t->altsize || ss.ss_flags != 0))
		TFAIL(t, "sigaltstack %p+%zu flags %#x, expected %p+%zu flags 0", ss.ss_sp,
		      ss.ss_size, ss.ss_flags, t->alt, t->altsize);
	else if (!t->alt && ss.ss_flags != SS_DISABLE)
		TFAIL(t, "sigaltstack %p+%zu flags %#x, expected SS_DISABLE", ss.ss_sp,
		      ss.ss_size, ss.ss_flags);
	if ((r = pthread_getname_np(pthread_self(), name, sizeof(name))))
		TFAIL(t, "pthread_getname_np: %s", strerror(r));
	else if (strcmp(name, t->name))
		TFAIL(t, "name \"%s\", expected \"%s\"", name, t->name);
}

/* ... then takes its pending signals */
static void take_signals(struct tinfo *t, int k)
{
	for (int i = 0; t->pend[i]; i++) {
		int sig = t->pend[i];
		sigset_t one;

		if (i && t->pend[i - 1] == sig)
			continue;	/* a queued RT signal: both come at once */
		sigemptyset(&one);
		sigaddset(&one, sig);
		pthread_sigmask(SIG_UNBLOCK, &one, NULL);
		pthread_sigmask(SIG_BLOCK, &one, NULL);
	}
	if (k == 2) {
		sigset_t one;

		sigemptyset(&one);
		sigaddset(&one, SIGWINCH);
		pthread_sigmask(SIG_UNBLOCK, &one, NULL);
		pthread_sigmask(SIG_BLOCK, &one, NULL);
	}
	for (int sig = 1; sig <= 64; sig++) {
		int want = 0, code = SI_TKILL;

		for (int i = 0; t->pend[i]; i++)
			if (t->pend[i] == sig)
				want++;
		if (sig == SIGWINCH && k == 2)
			want = 1, code = SI_USER;
		if (sig == SIGRTMIN + 2)
			code = SI_QUEUE;
		if (tl_count[sig] != want) {
			TFAIL(t, "signal %d handled %d times, expected %d", sig, tl_count[sig], want);
			continue;
		}
		if (!want)
			continue;
		if (tl_code[sig] != code || tl_pid[sig] != getpid())
			TFAIL(t, "signal %d: si_code %d si_pid %d, expected %d and %d", sig,
			      tl_code[sig], tl_pid[sig], code, (int)getpid());
		if (sig == SIGRTMIN + 2 && (tl_val[sig][0] != 100 || tl_val[sig][1] != 101))
			TFAIL(t, "SIGRTMIN+2 values %d, %d; expected 100, 101", tl_val[sig][0],
			      tl_val[sig][1]);
	}
	if (tl_off_altstack)
		TFAIL(t, "%d handler runs were not on the thread's alternate stack",
		      tl_off_altstack);
}

static void *worker(void *arg)
{
	struct tinfo *t = arg;

	setup_thread(t);
	pthread_mutex_lock(&mx);
	t->ready = 1;
	pthread_cond_broadcast(&cv);
	while (!go)
		pthread_cond_wait(&cv, &mx);
	pthread_mutex_unlock(&mx);
	check_state(t);
	pthread_barrier_wait(&checked);
	take_signals(t, t - ti);
	return NULL;
}

/* SigBlk / SigPnd / ShdPnd of a thread from /proc */
static int proc_sigs(pid_t tid, uint64_t *blk, uint64_t *pnd, uint64_t *shd, char *comm)
{
	char path[64], buf[4096], *p;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/task/%d/status", (int)tid);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	if (!(p = strstr(buf, "\nSigPnd:")) || sscanf(p + 8, "%" SCNx64, pnd) != 1 ||
	    !(p = strstr(buf, "\nShdPnd:")) || sscanf(p + 8, "%" SCNx64, shd) != 1 ||
	    !(p = strstr(buf, "\nSigBlk:")) || sscanf(p + 8, "%" SCNx64, blk) != 1)
		return -1;
	snprintf(path, sizeof(path), "/proc/self/task/%d/comm", (int)tid);
	n = zdtm_read_file(path, buf, 31);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	strcpy(comm, buf);
	return 0;
}

static void check_proc(void)
{
	for (int k = 0; k < NTH; k++) {
		struct tinfo *t = &ti[k];
		uint64_t blk, pnd, shd, want_pnd = 0, want_blk = set_bits(&t->mask);
		char comm[32];

		for (int i = 0; t->pend[i]; i++)
			want_pnd |= 1ULL << (t->pend[i] - 1);
		if (proc_sigs(t->tid, &blk, &pnd, &shd, comm)) {
			zdtm_fail("cannot read /proc/self/task/%d/status", (int)t->tid);
			continue;
		}
		if (blk != want_blk)
			zdtm_fail("%s (tid %d): SigBlk %016" PRIx64 ", expected %016" PRIx64,
				  t->name, (int)t->tid, blk, want_blk);
		if (pnd != want_pnd)
			zdtm_fail("%s (tid %d): SigPnd %016" PRIx64 ", expected %016" PRIx64,
				  t->name, (int)t->tid, pnd, want_pnd);
		if (shd != (uint64_t)1 << (SIGWINCH - 1))
			zdtm_fail("%s (tid %d): ShdPnd %016" PRIx64 ", expected %016" PRIx64,
				  t->name, (int)t->tid, shd, (uint64_t)1 << (SIGWINCH - 1));
		if (strcmp(comm, t->name))
			zdtm_fail("%s (tid %d): comm \"%s\"", t->name, (int)t->tid, comm);
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_sigaction = on_sig, .sa_flags = SA_SIGINFO | SA_ONSTACK };
	static const int handled[] = { SIGUSR1, SIGUSR2, SIGHUP, SIGURG, SIGWINCH, 0 };
	struct tinfo *m = &ti[NW];
	union sigval v;

	zdtm_init(argc, argv);
	sigemptyset(&sa.sa_mask);
	for (int i = 0; handled[i]; i++)
		if (sigaction(handled[i], &sa, NULL))
			zdtm_die("sigaction(%d): %m", handled[i]);
	if (sigaction(SIGRTMIN + 2, &sa, NULL))
		zdtm_die("sigaction(SIGRTMIN+2): %m");

	for (int k = 0; k < NTH; k++) {
		struct tinfo *t = &ti[k];

		sigemptyset(&t->mask);
		sigaddset(&t->mask, SIGWINCH);
		if (k < NW) {
			sigaddset(&t->mask, SIGTERM);
			sigaddset(&t->mask, SIGRTMIN + 2);
			snprintf(t->name, sizeof(t->name), "zt-sig-%d", k);
			t->altsize = 16384 + 4096 * k;
			t->alt = malloc(t->altsize);
			if (!t->alt)
				zdtm_die("malloc: %m");
		} else {
			snprintf(t->name, sizeof(t->name), "zt-sig-main");
		}
	}
	sigaddset(&ti[0].mask, SIGUSR1);
	ti[0].pend[0] = SIGUSR1;
	sigaddset(&ti[1].mask, SIGUSR2);
	sigaddset(&ti[1].mask, SIGPROF);
	ti[1].pend[0] = SIGUSR2;
	ti[1].pend[1] = SIGRTMIN + 2;
	ti[1].pend[2] = SIGRTMIN + 2;
	sigaddset(&ti[2].mask, SIGHUP);
	ti[2].pend[0] = SIGHUP;
	sigaddset(&ti[2].mask, SIGUSR1);
	sigaddset(&ti[2].mask, SIGALRM);
	sigaddset(&m->mask, SIGURG);
	m->pend[0] = SIGURG;

	/* the main thread's own state */
	m->th = pthread_self();
	m->tid = gettid();
	if (prctl(PR_SET_NAME, m->name))
		zdtm_die("PR_SET_NAME: %m");
	if (pthread_sigmask(SIG_SETMASK, &m->mask, NULL))
		zdtm_die("pthread_sigmask failed");

	if (pthread_barrier_init(&checked, NULL, NTH))
		zdtm_die("pthread_barrier_init failed");
	for (int k = 0; k < NW; k++)
		if (pthread_create(&ti[k].th, NULL, worker, &ti[k]))
			zdtm_die("pthread_create failed");
	pthread_mutex_lock(&mx);
	for (int k = 0; k < NW; k++)
		while (!ti[k].ready)
			pthread_cond_wait(&cv, &mx);
	pthread_mutex_unlock(&mx);

	if (pthread_kill(ti[0].th, SIGUSR1) || pthread_kill(ti[1].th, SIGUSR2) ||
	    pthread_kill(ti[2].th, SIGHUP))
		zdtm_die("pthread_kill failed");
	v.sival_int = 100;
	if (pthread_sigqueue(ti[1].th, SIGRTMIN + 2, v))
		zdtm_die("pthread_sigqueue failed");
	v.sival_int = 101;
	if (pthread_sigqueue(ti[1].th, SIGRTMIN + 2, v))
		zdtm_die("pthread_sigqueue failed");
	if (raise(SIGURG))
		zdtm_die("raise: %m");
	if (kill(getpid(), SIGWINCH))
		zdtm_die("kill: %m");
	check_proc();
	if (zdtm_failed())
		zdtm_die("set-up does not look as expected");
	zdtm_ready();

	zdtm_wait_check();

	/* zdtm_wait_check() has restored the main thread's mask */
	check_proc();
	pthread_mutex_lock(&mx);
	go = 1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mx);
	check_state(m);
	pthread_barrier_wait(&checked);
	take_signals(m, NW);
	for (int k = 0; k < NW; k++)
		pthread_join(ti[k].th, NULL);
	for (int k = 0; k < NTH; k++)
		for (int e = 0; e < ti[k].nerr && e < NERR; e++)
			zdtm_fail("%s (tid %d): %s", ti[k].name, (int)ti[k].tid, ti[k].err[e]);
	zdtm_pass_or_fail();
}

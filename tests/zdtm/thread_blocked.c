/*
 * thread_blocked: eight threads, each blocked in a different system call.
 *
 *   futex       raw FUTEX_WAIT_PRIVATE on a word that stays 0
 *   cond        pthread_cond_wait() (futex inside glibc)
 *   mutex       pthread_mutex_lock() on a mutex the main thread holds
 *   read        read() on an empty pipe
 *   write       write() of 8 KiB into a full pipe (4 KiB capacity)
 *   nanosleep   nanosleep(100 s)
 *   abssleep    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, now + 100 s)
 *   poll        poll() with no timeout on an empty pipe
 *   sigwait     sigtimedwait() for SIGUSR2, 100 s timeout (retried on
 *               EINTR: signal(7) allows it after a stop, even without a
 *               handler, and a ptrace freeze is such a stop)
 *
 * The workers block every signal except SIGUSR1 in the two sleepers.
 * Before READY the main thread waits until /proc/self/task/TID/syscall
 * shows each thread in its system call.  After SIGTERM it checks that they
 * still are (the original call or restart_syscall), then wakes them one by
 * one, each in its own way: FUTEX_WAKE after setting the word, broadcast,
 * unlock, writing a token, draining the full pipe, pthread_kill(SIGUSR1),
 * pthread_sigqueue(SIGUSR2) with a value.  A system call that returns
 * before its thread was woken, returns an error (EINTR without a handler
 * having run, ...) or returns the wrong data is a failure.  Every thread
 * also checks that its tid did not change.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { T_FUTEX, T_COND, T_MUTEX, T_READ, T_WRITE, T_SLEEP, T_ABSSLEEP, T_POLL, T_SIGWAIT, NT };
static const char *const tname[NT] = { "futex", "cond", "mutex", "read", "write",
				       "nanosleep", "abssleep", "poll", "sigwait" };
/* x86_64 numbers of the call each thread sits in */
static const int tsys[NT] = { SYS_futex, SYS_futex, SYS_futex, SYS_read, SYS_write,
			      SYS_clock_nanosleep, SYS_clock_nanosleep, SYS_poll,
			      SYS_rt_sigtimedwait };

#define TOKEN 0x746f6b656e2d3432ULL	/* "token-42" */
#define WSIZE 8192
#define PIPE_CAP 4096
#define SIGVAL 0x5eed

struct tinfo {
	pthread_t th;
	pid_t tid;
	volatile int in_call;	/* about to enter the blocking call */
	volatile int woken;	/* set by main right before waking it */
	volatile int done;
	int nerr;
	char err[4][200];
};

static struct tinfo ti[NT];
static uint32_t futex_word;
static pthread_mutex_t cond_mx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int cond_go;
static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static int rpipe[2], wpipe[2], ppipe[2];
static __thread volatile sig_atomic_t tl_usr1;

#define TFAIL(t, ...)                                                          \
	do {                                                                   \
		if ((t)->nerr < 4)                                             \
			snprintf((t)->err[(t)->nerr], sizeof((t)->err[0]), __VA_ARGS__); \
		(t)->nerr++;                                                   \
	} while (0)

static void on_usr1(int sig)
{
	(void)sig;
	tl_usr1++;
}

static void t_futex(struct tinfo *t)
{
	while (__atomic_load_n(&futex_word, __ATOMIC_ACQUIRE) == 0) {
		long r;

		t->in_call = 1;
		r = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
		if (r == 0 && !t->woken)
			TFAIL(t, "FUTEX_WAIT returned 0 before FUTEX_WAKE");
		else if (r < 0 && errno != EAGAIN)
			TFAIL(t, "FUTEX_WAIT: %s (woken %d)", strerror(errno), t->woken);
		else if (r == 0 && __atomic_load_n(&futex_word, __ATOMIC_ACQUIRE) == 0)
			TFAIL(t, "woken, but the word is still 0");
	}
}

static void t_cond(struct tinfo *t)
{
	int r;

	if ((r = pthread_mutex_lock(&cond_mx)))
		TFAIL(t, "pthread_mutex_lock: %s", strerror(r));
	t->in_call = 1;
	while (!cond_go) {
		r = pthread_cond_wait(&cond, &cond_mx);
		if (r)
			TFAIL(t, "pthread_cond_wait: %s", strerror(r));
	}
	if (!t->woken)
		TFAIL(t, "predicate true before main set it");
	if ((r = pthread_mutex_unlock(&cond_mx)))
		TFAIL(t, "pthread_mutex_unlock: %s", strerror(r));
}

static void t_mutex(struct tinfo *t)
{
	int r;

	t->in_call = 1;
	r = pthread_mutex_lock(&held);
	if (r)
		TFAIL(t, "pthread_mutex_lock: %s", strerror(r));
	if (!t->woken)
		TFAIL(t, "got the mutex before main released it");
	if ((r = pthread_mutex_unlock(&held)))
		TFAIL(t, "pthread_mutex_unlock: %s", strerror(r));
}

static void t_read(struct tinfo *t)
{
	uint64_t buf[4];
	ssize_t r;

	t->in_call = 1;
	r = read(rpipe[0], buf, sizeof(buf));
	if (!t->woken)
		TFAIL(t, "read returned %zd (%s) before the token was written", r,
		      r < 0 ? strerror(errno) : "-");
	else if (r != 8 || buf[0] != TOKEN)
		TFAIL(t, "read returned %zd (%s), data %#llx", r, r < 0 ? strerror(errno) : "-",
		      (unsigned long long)buf[0]);
}

static void t_write(struct tinfo *t)
{
	static uint8_t buf[WSIZE];
	ssize_t r;

	/* bytes PIPE_CAP.. of pattern 77 (main wrote 0..PIPE_CAP) */
	for (size_t i = 0; i < WSIZE; i++)
		buf[i] = zdtm_pattern_byte(77, PIPE_CAP + i);
	t->in_call = 1;
	r = write(wpipe[1], buf, WSIZE);
	if (!t->woken)
		TFAIL(t, "write returned %zd (%s) before the pipe was drained", r,
		      r < 0 ? strerror(errno) : "-");
	else if (r != WSIZE)
		TFAIL(t, "write returned %zd (%s), expected %d", r, r < 0 ? strerror(errno) : "-",
		      WSIZE);
}

static void sleeper(struct tinfo *t, int absolute)
{
	struct timespec req = { 100, 0 }, rem = { 0, 0 }, now;
	sigset_t usr1;
	int r;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
	t->in_call = 1;
	if (absolute) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		req.tv_sec += now.tv_sec;
		req.tv_nsec = now.tv_nsec;
		r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &req, NULL);
		if (r)
			errno = r, r = -1;
	} else {
		r = nanosleep(&req, &rem);
	}
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	if (r == 0)
		TFAIL(t, "returned 0 (slept 100 s?) woken %d", t->woken);
	else if (errno != EINTR)
		TFAIL(t, "failed: %s", strerror(errno));
	else if (!t->woken || tl_usr1 != 1)
		TFAIL(t, "EINTR, but woken %d, SIGUSR1 handler ran %d times", t->woken,
		      (int)tl_usr1);
	else if (!absolute && (rem.tv_sec < 80 || rem.tv_sec > 100))
		TFAIL(t, "remaining time %ld.%09ld s", (long)rem.tv_sec, rem.tv_nsec);
}

static void t_poll(struct tinfo *t)
{
	struct pollfd p = { .fd = ppipe[0], .events = POLLIN };
	uint64_t tok = 0;
	int r;

	t->in_call = 1;
	r = poll(&p, 1, -1);
	if (!t->woken)
		TFAIL(t, "poll returned %d (%s) before the token was written", r,
		      r < 0 ? strerror(errno) : "-");
	else if (r != 1 || p.revents != POLLIN)
		TFAIL(t, "poll returned %d (%s), revents %#x", r, r < 0 ? strerror(errno) : "-",
		      p.revents);
	else if (read(ppipe[0], &tok, 8) != 8 || tok != TOKEN)
		TFAIL(t, "read after poll: %#llx", (unsigned long long)tok);
}

static void t_sigwait(struct tinfo *t)
{
	struct timespec to = { 100, 0 };
	sigset_t set;
	siginfo_t si;
	int r;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	memset(&si, 0, sizeof(si));
	t->in_call = 1;
	/* sigtimedwait() is one of the calls that fail with EINTR, handler or
	 * not, when the process is stopped and resumed (signal(7)): also by
	 * ptrace, so by a dump.  Programs retry it; so do we. */
	do
		r = sigtimedwait(&set, &si, &to);
	while (r < 0 && errno == EINTR);
	if (!t->woken)
		TFAIL(t, "sigtimedwait returned %d (%s) before the signal was sent", r,
		      r < 0 ? strerror(errno) : "-");
	else if (r != SIGUSR2)
		TFAIL(t, "sigtimedwait returned %d (%s)", r, r < 0 ? strerror(errno) : "-");
	else if (si.si_code != SI_QUEUE || si.si_value.sival_int != SIGVAL || si.si_pid != getpid())
		TFAIL(t, "siginfo: code %d value %#x pid %d", si.si_code, si.si_value.sival_int,
		      (int)si.si_pid);
}

static void *worker(void *arg)
{
	struct tinfo *t = arg;
	int k = t - ti;

	t->tid = gettid();
	switch (k) {
	case T_FUTEX: t_futex(t); break;
	case T_COND: t_cond(t); break;
	case T_MUTEX: t_mutex(t); break;
	case T_READ: t_read(t); break;
	case T_WRITE: t_write(t); break;
	case T_SLEEP: sleeper(t, 0); break;
	case T_ABSSLEEP: sleeper(t, 1); break;
	case T_POLL: t_poll(t); break;
	case T_SIGWAIT: t_sigwait(t); break;
	}
	if (gettid() != t->tid)
		TFAIL(t, "gettid() %d, was %d", (int)gettid(), (int)t->tid);
	t->done = 1;
	return NULL;
}

/* syscall number a thread is in (-1: running or unreadable), and its state */
static int thread_syscall(pid_t tid, char *state)
{
	char path[64], buf[256];
	ssize_t n;

	*state = '?';
	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n > 0) {
		char *p;
		buf[n] = 0;
		p = strrchr(buf, ')');
		if (p && p[1] && p[2])
			*state = p[2];
	}
	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	if (buf[0] < '0' || buf[0] > '9')
		return -1;
	return atoi(buf);
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigset_t all, old;
	struct timespec ms5 = { 0, 5000000 };
	static uint8_t fill[PIPE_CAP], got[PIPE_CAP + WSIZE];
	uint64_t tok = TOKEN;
	int64_t deadline;

	zdtm_init(argc, argv);
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		zdtm_die("sigaction: %m");
	if (pipe(rpipe) || pipe(wpipe) || pipe(ppipe))
		zdtm_die("pipe: %m");
	if (fcntl(wpipe[1], F_SETPIPE_SZ, PIPE_CAP) != PIPE_CAP)
		zdtm_die("F_SETPIPE_SZ: %m");
	for (size_t i = 0; i < PIPE_CAP; i++)
		fill[i] = zdtm_pattern_byte(77, i);
	if (write(wpipe[1], fill, PIPE_CAP) != PIPE_CAP)
		zdtm_die("filling the pipe: %m");
	pthread_mutex_lock(&held);

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (int k = 0; k < NT; k++)
		if (pthread_create(&ti[k].th, NULL, worker, &ti[k]))
			zdtm_die("pthread_create failed");
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	deadline = zdtm_now_ns() + 5000000000LL;
	for (int k = 0; k < NT; k++) {
		char st;

		while (!ti[k].in_call || thread_syscall(ti[k].tid, &st) != tsys[k] || st != 'S') {
			if (ti[k].done || zdtm_now_ns() > deadline)
				zdtm_die("thread %s did not block in syscall %d (%d, state %c, done %d)",
					 tname[k], tsys[k], thread_syscall(ti[k].tid, &st), st,
					 ti[k].done);
			nanosleep(&ms5, NULL);
		}
	}
	zdtm_ready();

	zdtm_wait_check();

	for (int k = 0; k < NT; k++) {
		char st;
		int nr = thread_syscall(ti[k].tid, &st);

		if (ti[k].done)
			zdtm_fail("thread %s (tid %d) finished before it was woken", tname[k],
				  (int)ti[k].tid);
		else if ((nr != tsys[k] && nr != SYS_restart_syscall) || st != 'S')
			zdtm_fail("thread %s (tid %d) is in syscall %d, state %c; expected %d or %d, S",
				  tname[k], (int)ti[k].tid, nr, st, tsys[k], SYS_restart_syscall);
	}

	/* wake them, one at a time */
	ti[T_FUTEX].woken = 1;
	__atomic_store_n(&futex_word, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);

	pthread_mutex_lock(&cond_mx);
	ti[T_COND].woken = 1;
	cond_go = 1;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&cond_mx);

	ti[T_MUTEX].woken = 1;
	pthread_mutex_unlock(&held);

	ti[T_READ].woken = 1;
	if (write(rpipe[1], &tok, 8) != 8)
		zdtm_fail("writing the read token: %m");

	ti[T_WRITE].woken = 1;
	{
		size_t off = 0;
		int64_t end = zdtm_now_ns() + 2000000000LL;

		while (off < sizeof(got) && zdtm_now_ns() < end) {
			ssize_t r = read(wpipe[0], got + off, sizeof(got) - off);
			if (r > 0)
				off += r;
			else if (r < 0 && errno != EINTR)
				break;
		}
		if (off != sizeof(got))
			zdtm_fail("drained %zu bytes from the full pipe, expected %zu", off,
				  sizeof(got));
		else if ((off = zdtm_check(got, sizeof(got), 77)) != sizeof(got))
			zdtm_fail("pipe data differs at byte %zu", off);
	}

	ti[T_SLEEP].woken = 1;
	pthread_kill(ti[T_SLEEP].th, SIGUSR1);
	ti[T_ABSSLEEP].woken = 1;
	pthread_kill(ti[T_ABSSLEEP].th, SIGUSR1);

	ti[T_POLL].woken = 1;
	if (write(ppipe[1], &tok, 8) != 8)
		zdtm_fail("writing the poll token: %m");

	ti[T_SIGWAIT].woken = 1;
	{
		union sigval v = { .sival_int = SIGVAL };
		if (pthread_sigqueue(ti[T_SIGWAIT].th, SIGUSR2, v))
			zdtm_fail("pthread_sigqueue failed");
	}

	deadline = zdtm_now_ns() + 3000000000LL;
	for (int k = 0; k < NT; k++) {
		while (!ti[k].done && zdtm_now_ns() < deadline)
			nanosleep(&ms5, NULL);
		if (!ti[k].done) {
			char st;
			zdtm_fail("thread %s (tid %d) not done 3 s after being woken (syscall %d)",
				  tname[k], (int)ti[k].tid, thread_syscall(ti[k].tid, &st));
			continue;
		}
		pthread_join(ti[k].th, NULL);
		for (int e = 0; e < ti[k].nerr && e < 4; e++)
			zdtm_fail("thread %s (tid %d): %s", tname[k], (int)ti[k].tid, ti[k].err[e]);
	}
	zdtm_pass_or_fail();
}

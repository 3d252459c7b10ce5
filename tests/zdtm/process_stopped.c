/*
 * process_stopped: children in a job-control stop must come back stopped, and their parent
 * must see exactly the stop reports and SIGCHLDs it would have seen without the dump.
 *
 * The root (which must itself run: the harness checks it) forks three children:
 *   c1  handles SIGUSR1 and stops itself with SIGSTOP; the root collects the stop
 *       (waitpid WUNTRACED), then sends SIGUSR1, which stays pending while c1 is stopped;
 *   c2  in a process group of its own (not orphaned: its parent is in another group of the
 *       same session) stops itself with SIGTSTP; the root leaves the stop report uncollected
 *       (it only looks at it with waitid WNOWAIT);
 *   c3  runs a second thread that counts; the root stops it with SIGSTOP and collects the stop.
 * SIGCHLD is blocked in the root; the ones from the setup are taken before READY.
 *
 * After SIGTERM the root checks, before touching anything: every child (every thread) is in
 * state T; c1 still has SIGUSR1 pending; no SIGCHLD is pending (a restore that stopped the
 * children again would have sent one); waitpid(WUNTRACED | WNOHANG) has nothing for c1 and c3
 * (their stops were collected), and c2's stop is still there to collect, from SIGTSTP. Then it
 * continues them with SIGCONT: c1 must run its handler, c3's thread must count again, and every
 * child must exit 0.
 */
#include "zdtm.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1;
static volatile sig_atomic_t got_term;
static volatile unsigned long counter;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

static void on_term(int sig)
{
	(void)sig;
	got_term = 1;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* c1: stops itself; after SIGCONT the pending SIGUSR1 must have run its handler. */
static void c1_main(void)
{
	zdtm_set_role("c1");
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	zdtm_tree_ready(NULL, 0);
	raise(SIGSTOP);
	for (int i = 0; i < 2000 && !got_usr1; i++)
		sleep_ms(1);
	if (!got_usr1)
		zdtm_fail("continued, but the SIGUSR1 pending while stopped never came");
	zdtm_child_exit();
}

/* c2: stops itself with SIGTSTP in a process group of its own. */
static void c2_main(void)
{
	zdtm_set_role("c2");
	setpgid(0, 0);
	zdtm_tree_ready(NULL, 0);
	raise(SIGTSTP);
	zdtm_child_exit();
}

static void *counting(void *arg)
{
	(void)arg;
	for (;;) {
		counter++;
		sleep_ms(1);
	}
	return NULL;
}

/* c3: two threads; stopped by the root; on SIGTERM (after SIGCONT) the worker must count. */
static void c3_main(void)
{
	zdtm_set_role("c3");
	struct sigaction sa = { .sa_handler = on_term };
	sigaction(SIGTERM, &sa, NULL);
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, &old);
	pthread_t t;
	if (pthread_create(&t, NULL, counting, NULL))
		zdtm_die("pthread_create failed");
	while (counter == 0)
		sleep_ms(1);
	zdtm_tree_ready(NULL, 0);
	while (!got_term)
		sigsuspend(&old);
	unsigned long before = counter;
	for (int i = 0; i < 2000 && counter == before; i++)
		sleep_ms(1);
	if (counter == before)
		zdtm_fail("the worker thread does not count after SIGCONT");
	zdtm_child_exit();
}

/* Whether every thread of pid (/proc/PID/task/ * /stat) is in state 'T': returns 0, or the
 * first other state seen. */
static char stopped_state(pid_t pid, int *nthreads)
{
	char path[64], buf[512];
	*nthreads = 0;
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	DIR *d = opendir(path);
	if (!d)
		return '?';
	char bad = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char stat[384];
		snprintf(stat, sizeof(stat), "%s/%s/stat", path, e->d_name);
		ssize_t n = zdtm_read_file(stat, buf, sizeof(buf) - 1);
		if (n <= 0) {
			bad = '?';
			continue;
		}
		buf[n] = 0;
		char *p = strrchr(buf, ')');
		char st = p && p[1] == ' ' ? p[2] : '?';
		(*nthreads)++;
		if (st != 'T' && !bad)
			bad = st;
	}
	closedir(d);
	return bad;
}

/* The pending-signal mask of a process-wide queue line ("ShdPnd:") of /proc/PID/status. */
static unsigned long long shared_pending(pid_t pid)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	ssize_t n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strstr(buf, "ShdPnd:");
	return p ? strtoull(p + 7, NULL, 16) : 0;
}

static void check_stopped(pid_t pid, const char *who, int want_threads)
{
	int n;
	char st = stopped_state(pid, &n);
	if (st)
		zdtm_fail("%s is not stopped: a thread is in state %c", who, st);
	else if (n != want_threads)
		zdtm_fail("%s has %d threads, expected %d", who, n, want_threads);
}

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);

	zdtm_tree_sync_init();
	pid_t c1 = fork();
	if (c1 == 0)
		c1_main();
	pid_t c2 = fork();
	if (c2 == 0)
		c2_main();
	setpgid(c2, c2);
	pid_t c3 = fork();
	if (c3 == 0)
		c3_main();
	if (c1 < 0 || c2 < 0 || c3 < 0)
		zdtm_die("fork: %s", strerror(errno));
	zdtm_tree_wait(NULL, 0);

	int status;
	if (waitpid(c1, &status, WUNTRACED) != c1 || !WIFSTOPPED(status) || WSTOPSIG(status) != SIGSTOP)
		zdtm_die("c1 did not stop with SIGSTOP (%s)", zdtm_wait_str(status));
	if (kill(c1, SIGUSR1))
		zdtm_die("kill(c1, SIGUSR1): %s", strerror(errno));
	siginfo_t si = { 0 };
	if (waitid(P_PID, c2, &si, WSTOPPED | WNOWAIT) || si.si_code != CLD_STOPPED ||
	    si.si_status != SIGTSTP)
		zdtm_die("c2 did not stop with SIGTSTP (code %d, status %d)", si.si_code, si.si_status);
	if (kill(c3, SIGSTOP))
		zdtm_die("kill(c3, SIGSTOP): %s", strerror(errno));
	if (waitpid(c3, &status, WUNTRACED) != c3 || !WIFSTOPPED(status))
		zdtm_die("c3 did not stop (%s)", zdtm_wait_str(status));
	/* Every thread of c3 is stopped once the group stop is reported. */
	if (!(shared_pending(c1) & (1ULL << (SIGUSR1 - 1))))
		zdtm_die("SIGUSR1 is not pending in c1");
	/* Take the SIGCHLDs of the setup. */
	struct timespec zero = { 0, 0 };
	while (sigtimedwait(&chld, &si, &zero) == SIGCHLD)
		;
	zdtm_ready();

	zdtm_wait_check();

	check_stopped(c1, "c1", 1);
	check_stopped(c2, "c2", 1);
	check_stopped(c3, "c3", 2);
	if (!(shared_pending(c1) & (1ULL << (SIGUSR1 - 1))))
		zdtm_fail("SIGUSR1 is no longer pending in the stopped c1");
	if (sigtimedwait(&chld, &si, &zero) == SIGCHLD)
		zdtm_fail("a SIGCHLD came since READY (code %d from pid %d, status %d)", si.si_code,
			  si.si_pid, si.si_status);
	pid_t got = waitpid(c1, &status, WUNTRACED | WNOHANG);
	if (got != 0)
		zdtm_fail("waitpid(c1, WUNTRACED) reports %d (%s): its stop was collected before",
			  got, got > 0 ? zdtm_wait_str(status) : strerror(errno));
	got = waitpid(c3, &status, WUNTRACED | WNOHANG);
	if (got != 0)
		zdtm_fail("waitpid(c3, WUNTRACED) reports %d (%s): its stop was collected before",
			  got, got > 0 ? zdtm_wait_str(status) : strerror(errno));
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, c2, &si, WSTOPPED | WNOHANG | WNOWAIT))
		zdtm_fail("waitid(c2): %s", strerror(errno));
	else if (si.si_pid != c2 || si.si_code != CLD_STOPPED || si.si_status != SIGTSTP)
		zdtm_fail("c2's uncollected stop report is gone or changed (pid %d, code %d, status %d)",
			  si.si_pid, si.si_code, si.si_status);

	/* Let them go. */
	kill(c1, SIGCONT);
	kill(c2, SIGCONT);
	kill(c3, SIGCONT);
	zdtm_expect_exit(c1, 0, "c1");
	zdtm_expect_exit(c2, 0, "c2");
	zdtm_stop_child(c3, "c3");
	zdtm_pass_or_fail();
}

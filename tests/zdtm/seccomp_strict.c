/* Seccomp strict mode: a thread and a child process in SECCOMP_MODE_STRICT,
 * each blocked in read() on a pipe, answering every byte with the byte + 1.
 * After the restore both must still be in strict mode (Seccomp: 1 in their
 * status, the main thread 0), still answer, and the strict mode must still be
 * enforced: told to call getpid(), the child is killed by SIGKILL. */
#include "zdtm.h"

#include <errno.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Answers bytes for ever, in strict mode (only read, write, exit, sigreturn). */
static void __attribute__((noreturn)) strict_loop(int in, int out)
{
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_STRICT, 0, NULL))
		zdtm_die("seccomp(SECCOMP_SET_MODE_STRICT): %m");
	for (;;) {
		unsigned char c;
		long n = syscall(SYS_read, in, &c, 1);
		if (n == 1 && c == 'k')
			syscall(SYS_getpid); /* forbidden: SIGKILL */
		if (n == 1) {
			c++;
			syscall(SYS_write, out, &c, 1);
		}
	}
}

static int t_in[2], t_out[2];
static volatile pid_t worker_tid;

static void *worker(void *arg)
{
	(void)arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	worker_tid = (pid_t)syscall(SYS_gettid);
	strict_loop(t_in[0], t_out[1]);
}

static int mode_of(const char *path)
{
	char buf[4096];
	ssize_t n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *m = strstr(buf, "\nSeccomp:");
	return m ? atoi(m + 9) : -1;
}

/* Sends c, expects c + 1 back within 2 s. */
static void ping(const char *who, int in, int out, char c)
{
	if (write(in, &c, 1) != 1) {
		zdtm_fail("%s: write: %m", who);
		return;
	}
	struct pollfd p = { .fd = out, .events = POLLIN };
	if (poll(&p, 1, 2000) != 1) {
		zdtm_fail("%s: no answer", who);
		return;
	}
	char r;
	if (read(out, &r, 1) != 1 || r != c + 1)
		zdtm_fail("%s: wrong answer", who);
}

int main(int argc, char **argv)
{
	int c_in[2], c_out[2];
	zdtm_init(argc, argv);
	if (pipe(t_in) || pipe(t_out) || pipe(c_in) || pipe(c_out))
		zdtm_die("pipe: %m");
	pthread_t t;
	if (pthread_create(&t, NULL, worker, NULL))
		zdtm_die("pthread_create");
	zdtm_tree_sync_init();
	pid_t child = fork();
	if (child < 0)
		zdtm_die("fork: %m");
	if (child == 0) {
		zdtm_set_role("child");
		sigset_t all;
		sigfillset(&all);
		sigprocmask(SIG_BLOCK, &all, NULL);
		pid_t me = getpid();
		zdtm_tree_ready(&me, sizeof(me));
		strict_loop(c_in[0], c_out[1]);
	}
	pid_t got;
	zdtm_tree_wait(&got, sizeof(got));
	while (!worker_tid)
		usleep(1000);
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/task/%d/status", (int)worker_tid);
	while (mode_of(path) != 1)
		usleep(1000);
	char cpath[64];
	snprintf(cpath, sizeof(cpath), "/proc/%d/status", (int)child);
	while (mode_of(cpath) != 1)
		usleep(1000);
	zdtm_ready();
	zdtm_wait_check();

	if (mode_of("/proc/self/status") != 0)
		zdtm_fail("main thread: Seccomp is not 0");
	if (mode_of(path) != 1)
		zdtm_fail("worker thread: Seccomp is %d, not 1", mode_of(path));
	if (mode_of(cpath) != 1)
		zdtm_fail("child: Seccomp is %d, not 1", mode_of(cpath));
	ping("worker thread", t_in[1], t_out[0], 'a');
	ping("child", c_in[1], c_out[0], 'b');
	char k = 'k';
	if (write(c_in[1], &k, 1) != 1)
		zdtm_fail("child: write: %m");
	int status;
	if (zdtm_waitpid(child, &status) != child)
		zdtm_fail("child: waitpid: %m");
	else if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
		zdtm_fail("child: %s after a forbidden call, expected SIGKILL", zdtm_wait_str(status));
	zdtm_pass_or_fail();
}

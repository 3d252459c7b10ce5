/*
 * tree_wait: exit statuses across a dump - zombies and blocked waiters.
 *
 *   root
 *   ├─ z    exits with status 7 right away: a zombie at dump time
 *   ├─ zs   kills itself with SIGUSR2: a zombie with a signal status
 *   ├─ w    waits for SIGTERM from the root, then exits with 42
 *   └─ p    blocked in waitpid(q) (no WNOHANG) from set-up to the end
 *      └─ q  waits for SIGTERM (sent by the root), then exits with 42
 *
 * Before READY the root waits (waitid WNOWAIT) until both zombies exist,
 * and until p sits in wait4 (/proc/p/syscall).  After SIGTERM the root
 * checks that z and zs are still unreaped zombies with the right siginfo
 * (waitid WNOWAIT: CLD_EXITED 7, CLD_KILLED SIGUSR2) and reaps them
 * (waitpid: exit 7, signal SIGUSR2); checks that p is still in wait4;
 * sends SIGTERM to w and reaps it (exit 42); sends SIGTERM to q, upon
 * which p's waitpid() must return q's status (exit 42; EINTR or anything
 * else is a failure) and p exits 0.  Finally waitpid(-1, WNOHANG) must say
 * ECHILD: no child appeared or stayed behind.
 */
#include "zdtm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { Z, ZS, W, P, Q, N };
static const char *const names[N] = { "z", "zs", "w", "p", "q" };

struct msg {
	int role;
	pid_t pid;
};

static pid_t pids[N];

static void ready(int role)
{
	struct msg m = { role, getpid() };

	zdtm_set_role(names[role]);
	zdtm_tree_ready(&m, sizeof(m));
}

static pid_t spawn(int role, void (*fn)(void))
{
	pid_t pid = fork();

	if (pid < 0)
		zdtm_die("fork: %m");
	if (pid == 0) {
		fn();
		_exit(99);
	}
	return pid;
}

static void z_main(void)
{
	ready(Z);
	_exit(7);
}

static void zs_main(void)
{
	ready(ZS);
	signal(SIGUSR2, SIG_DFL);
	raise(SIGUSR2);
	_exit(98);
}

static void w_main(void)
{
	pid_t me = getpid(), parent = getppid();

	ready(W);
	zdtm_wait_check();
	if (getpid() != me || getppid() != parent)
		zdtm_fail("pid/ppid %d/%d, were %d/%d", getpid(), getppid(), me, parent);
	_exit(zdtm_failed() ? 1 : 42);
}

static void q_main(void)
{
	pid_t me = getpid(), parent = getppid();

	ready(Q);
	zdtm_wait_check();
	if (getpid() != me || getppid() != parent)
		zdtm_fail("pid/ppid %d/%d, were %d/%d", getpid(), getppid(), me, parent);
	_exit(zdtm_failed() ? 1 : 42);
}

static void p_main(void)
{
	pid_t q = spawn(Q, q_main), r;
	int status = 0;

	ready(P);
	/* nobody signals p: EINTR here would be a spurious one */
	r = waitpid(q, &status, 0);
	if (r != q)
		zdtm_fail("waitpid(q = %d) returned %d (%s)", (int)q, (int)r,
			  r < 0 ? strerror(errno) : "-");
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 42)
		zdtm_fail("q %s, expected exit status 42", zdtm_wait_str(status));
	zdtm_child_exit();
}

static int in_syscall(pid_t pid)
{
	char path[64], buf[128];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/syscall", (int)pid);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	return (buf[0] >= '0' && buf[0] <= '9') ? atoi(buf) : -1;
}

static void check_zombie(pid_t pid, const char *name, int code, int st)
{
	siginfo_t si;
	int status;

	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, pid, &si, WEXITED | WNOHANG | WNOWAIT))
		zdtm_fail("waitid(%s, pid %d): %m", name, (int)pid);
	else if (si.si_pid != pid)
		zdtm_fail("%s (pid %d) is not a zombie (waitid si_pid %d)", name, (int)pid,
			  (int)si.si_pid);
	else if (si.si_code != code || si.si_status != st || si.si_signo != SIGCHLD)
		zdtm_fail("%s: waitid si_code %d si_status %d, expected %d %d", name, si.si_code,
			  si.si_status, code, st);
	if (zdtm_waitpid(pid, &status) != pid) {
		zdtm_fail("waitpid(%s, pid %d): %m", name, (int)pid);
		return;
	}
	if (code == CLD_EXITED && !(WIFEXITED(status) && WEXITSTATUS(status) == st))
		zdtm_fail("%s %s, expected exit status %d", name, zdtm_wait_str(status), st);
	if (code == CLD_KILLED && !(WIFSIGNALED(status) && WTERMSIG(status) == st))
		zdtm_fail("%s %s, expected signal %d", name, zdtm_wait_str(status), st);
}

int main(int argc, char **argv)
{
	struct msg got[N];
	struct timespec ms5 = { 0, 5000000 };
	siginfo_t si;
	int64_t deadline;
	size_t n;
	int status;

	zdtm_init(argc, argv);
	zdtm_tree_sync_init();
	pids[Z] = spawn(Z, z_main);
	pids[ZS] = spawn(ZS, zs_main);
	pids[W] = spawn(W, w_main);
	pids[P] = spawn(P, p_main);
	n = zdtm_tree_wait(got, sizeof(got));
	if (n != N * sizeof(struct msg))
		zdtm_die("got %zu bytes of ready messages, expected %zu", n, N * sizeof(struct msg));
	for (int i = 0; i < N; i++) {
		if (got[i].role < 0 || got[i].role >= N)
			zdtm_die("bad ready message");
		if (got[i].role == Q)
			pids[Q] = got[i].pid;
		else if (pids[got[i].role] != got[i].pid)
			zdtm_die("%s says its pid is %d, fork said %d", names[got[i].role],
				 (int)got[i].pid, (int)pids[got[i].role]);
	}
	/* both zombies exist (WNOWAIT: not reaped) */
	if (waitid(P_PID, pids[Z], &si, WEXITED | WNOWAIT) ||
	    waitid(P_PID, pids[ZS], &si, WEXITED | WNOWAIT))
		zdtm_die("waitid: %m");
	deadline = zdtm_now_ns() + 5000000000LL;
	while (in_syscall(pids[P]) != SYS_wait4) {
		if (zdtm_now_ns() > deadline)
			zdtm_die("p is not blocked in wait4");
		nanosleep(&ms5, NULL);
	}
	zdtm_ready();

	zdtm_wait_check();

	check_zombie(pids[Z], "z", CLD_EXITED, 7);
	check_zombie(pids[ZS], "zs", CLD_KILLED, SIGUSR2);
	if (in_syscall(pids[P]) != SYS_wait4 && in_syscall(pids[P]) != SYS_restart_syscall)
		zdtm_fail("p (pid %d) is not in wait4 any more (syscall %d)", (int)pids[P],
			  in_syscall(pids[P]));
	if (kill(pids[W], SIGTERM))
		zdtm_fail("kill(w): %m");
	zdtm_expect_exit(pids[W], 42, "w");
	if (kill(pids[Q], SIGTERM))
		zdtm_fail("kill(q): %m");
	zdtm_expect_exit(pids[P], 0, "p");
	if (waitpid(-1, &status, WNOHANG) != -1 || errno != ECHILD)
		zdtm_fail("waitpid(-1, WNOHANG) should fail with ECHILD: %m");
	zdtm_pass_or_fail();
}

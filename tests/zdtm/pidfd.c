/* pidfds: of the process itself (dup'ed to a second fd, FD_CLOEXEC on one),
 * of a running child (PIDFD_NONBLOCK), of a child that exited 7 and is not
 * reaped (a zombie), and the child's pidfd of its parent. After the restore
 * each names the same pid in its fdinfo, keeps its flags, and works: signal 0
 * through the own pidfd, the zombie's pidfd is readable and waitid(P_PIDFD)
 * reaps it with status 7, the child's pidfd of the root reaches the root, and
 * the running child is stopped with pidfd_send_signal and reaped through its
 * pidfd. */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif

static int pidfd_open(pid_t pid, unsigned flags)
{
	return (int)syscall(SYS_pidfd_open, pid, flags);
}

static int send_sig(int pidfd, int sig)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* The Pid: line of fd's fdinfo. */
static long fdinfo_pid(int fd)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	ssize_t n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -100;
	buf[n] = 0;
	char *p = strstr(buf, "\nPid:");
	return p ? strtol(p + 5, NULL, 10) : -100;
}

static void expect_pid(const char *who, int fd, pid_t pid)
{
	long got = fdinfo_pid(fd);
	if (got != pid)
		zdtm_fail("%s: fd %d names pid %ld, expected %d", who, fd, got, (int)pid);
}

enum { SELF_FD = 40, SELF_DUP = 41, CHILD_FD = 42, ZOMBIE_FD = 43, PARENT_FD = 44 };

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	pid_t me = getpid();
	int fd = pidfd_open(me, 0);
	if (fd < 0 || dup2(fd, SELF_FD) < 0 || fcntl(SELF_FD, F_SETFD, FD_CLOEXEC) ||
	    dup2(SELF_FD, SELF_DUP) < 0 || close(fd))
		zdtm_die("pidfd of itself: %m");

	pid_t zombie = fork();
	if (zombie < 0)
		zdtm_die("fork: %m");
	if (zombie == 0)
		_exit(7);
	fd = pidfd_open(zombie, 0);
	if (fd < 0 || dup2(fd, ZOMBIE_FD) < 0 || close(fd))
		zdtm_die("pidfd of the zombie: %m");
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, zombie, &si, WEXITED | WNOWAIT))
		zdtm_die("waitid(WNOWAIT): %m");

	zdtm_tree_sync_init();
	pid_t child = fork();
	if (child < 0)
		zdtm_die("fork: %m");
	if (child == 0) {
		zdtm_set_role("child");
		close(SELF_FD);
		close(SELF_DUP);
		close(ZOMBIE_FD);
		int pfd = pidfd_open(getppid(), 0);
		if (pfd < 0 || dup2(pfd, PARENT_FD) < 0 || close(pfd))
			zdtm_die("pidfd of the parent: %m");
		pid_t self = getpid();
		zdtm_tree_ready(&self, sizeof(self));
		zdtm_wait_check();
		expect_pid("child", PARENT_FD, me);
		if (send_sig(PARENT_FD, 0))
			zdtm_fail("child: signal 0 to the root through its pidfd: %m");
		zdtm_child_exit();
	}
	fd = pidfd_open(child, PIDFD_NONBLOCK);
	if (fd < 0 || dup2(fd, CHILD_FD) < 0 || close(fd))
		zdtm_die("pidfd of the child: %m");
	fcntl(CHILD_FD, F_SETFL, O_NONBLOCK);
	pid_t got;
	zdtm_tree_wait(&got, sizeof(got));
	zdtm_ready();
	zdtm_wait_check();

	expect_pid("own", SELF_FD, me);
	expect_pid("own dup", SELF_DUP, me);
	expect_pid("child", CHILD_FD, child);
	expect_pid("zombie", ZOMBIE_FD, zombie);
	if (fcntl(SELF_FD, F_GETFD) != FD_CLOEXEC || fcntl(SELF_DUP, F_GETFD) != 0)
		zdtm_fail("FD_CLOEXEC of the own pidfds changed");
	if (!(fcntl(CHILD_FD, F_GETFL) & O_NONBLOCK))
		zdtm_fail("the child's pidfd lost O_NONBLOCK");
	if (send_sig(SELF_FD, 0))
		zdtm_fail("signal 0 through the own pidfd: %m");
	struct pollfd p = { .fd = ZOMBIE_FD, .events = POLLIN };
	if (poll(&p, 1, 0) != 1)
		zdtm_fail("the zombie's pidfd is not readable");
	memset(&si, 0, sizeof(si));
	if (waitid(P_PIDFD, ZOMBIE_FD, &si, WEXITED))
		zdtm_fail("waitid(P_PIDFD) of the zombie: %m");
	else if (si.si_pid != zombie || si.si_code != CLD_EXITED || si.si_status != 7)
		zdtm_fail("the zombie: pid %d code %d status %d", (int)si.si_pid, si.si_code, si.si_status);
	memset(&si, 0, sizeof(si));
	if (waitid(P_PIDFD, CHILD_FD, &si, WEXITED) == 0 || errno != EAGAIN)
		zdtm_fail("waitid on the running child's non-blocking pidfd did not say EAGAIN");
	if (send_sig(CHILD_FD, SIGTERM))
		zdtm_fail("SIGTERM to the child through its pidfd: %m");
	memset(&si, 0, sizeof(si));
	int flags = fcntl(CHILD_FD, F_GETFL);
	fcntl(CHILD_FD, F_SETFL, flags & ~O_NONBLOCK);
	if (waitid(P_PIDFD, CHILD_FD, &si, WEXITED))
		zdtm_fail("waitid(P_PIDFD) of the child: %m");
	else if (si.si_pid != child || si.si_code != CLD_EXITED || si.si_status != 0)
		zdtm_fail("the child: pid %d code %d status %d", (int)si.si_pid, si.si_code, si.si_status);
	zdtm_pass_or_fail();
}

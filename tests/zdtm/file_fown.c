/*
 * file_fown: the owner and signal of asynchronous I/O (O_ASYNC, F_SETOWN,
 * F_SETOWN_EX, F_SETSIG) of open file descriptions.
 *
 *   file:  a regular file opened with O_ASYNC (a regular file has no
 *          signal-driven I/O: F_SETFL cannot set the flag, only open(2)
 *          keeps it), F_SETOWN to the process, F_SETSIG SIGUSR1
 *   pipe1: a pipe's read end, O_ASYNC, F_SETOWN to the process (SIGIO)
 *   pipe2: a pipe's read end, O_ASYNC, F_SETOWN to its process group
 *          (-pgrp), F_SETSIG SIGRTMIN+2
 *   fifo:  a FIFO's read end, O_ASYNC, F_SETOWN_EX to the thread
 *          (F_OWNER_TID), F_SETSIG SIGRTMIN+3; written through a
 *          read-write end without O_ASYNC
 *   quiet: a pipe's read end, O_ASYNC without an owner: no signal
 *
 * All these signals are blocked. On SIGTERM: F_GETOWN_EX, F_GETOWN,
 * F_GETSIG and O_ASYNC of each; none of the signals is pending; then a
 * byte written into each pipe and the FIFO must raise its signal (taken
 * with sigtimedwait), the F_SETSIG ones with si_fd = the read end's fd and
 * si_code POLL_IN; the quiet pipe raises nothing.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct owned {
	const char *name;
	int fd;		/* the end that has O_ASYNC */
	int wfd;	/* where to write to raise it (-1: a regular file) */
	int type, pid, sig;
	int legacy;	/* what F_GETOWN returns */
};

static sigset_t sigs;

static void set_owner(struct owned *o)
{
	struct f_owner_ex ex = { .type = o->type, .pid = o->pid };

	if (o->wfd >= 0 && fcntl(o->fd, F_SETFL, fcntl(o->fd, F_GETFL) | O_ASYNC))
		zdtm_die("%s: F_SETFL O_ASYNC: %m", o->name);
	if (!(fcntl(o->fd, F_GETFL) & O_ASYNC))
		zdtm_die("%s: O_ASYNC is not set", o->name);
	if (o->pid && fcntl(o->fd, F_SETOWN_EX, &ex))
		zdtm_die("%s: F_SETOWN_EX: %m", o->name);
	if (o->sig && fcntl(o->fd, F_SETSIG, o->sig))
		zdtm_die("%s: F_SETSIG: %m", o->name);
}

static void check_owner(struct owned *o)
{
	struct f_owner_ex ex = { -1, -1 };

	if (!(fcntl(o->fd, F_GETFL) & O_ASYNC))
		zdtm_fail("%s: O_ASYNC is gone", o->name);
	if (fcntl(o->fd, F_GETOWN_EX, &ex))
		zdtm_fail("%s: F_GETOWN_EX: %m", o->name);
	else if (o->pid && (ex.type != o->type || ex.pid != o->pid))
		zdtm_fail("%s: owner type %d pid %d, expected type %d pid %d", o->name, ex.type,
			  ex.pid, o->type, o->pid);
	else if (!o->pid && ex.pid != 0)
		zdtm_fail("%s: owner pid %d, expected none", o->name, ex.pid);
	if (fcntl(o->fd, F_GETOWN) != o->legacy)
		zdtm_fail("%s: F_GETOWN %d, expected %d", o->name, fcntl(o->fd, F_GETOWN), o->legacy);
	if (fcntl(o->fd, F_GETSIG) != o->sig)
		zdtm_fail("%s: F_GETSIG %d, expected %d", o->name, fcntl(o->fd, F_GETSIG), o->sig);
}

static void check_signal(struct owned *o)
{
	struct timespec wait = { 2, 0 };
	siginfo_t si;
	sigset_t one;
	int sig = o->sig ? o->sig : SIGIO;
	char c;

	if (write(o->wfd, "s", 1) != 1) {
		zdtm_fail("%s: write: %m", o->name);
		return;
	}
	sigemptyset(&one);
	sigaddset(&one, sig);
	memset(&si, 0, sizeof(si));
	while (sigtimedwait(&one, &si, &wait) < 0) {
		if (errno != EINTR) {
			zdtm_fail("%s: no signal %d after a write (%m)", o->name, sig);
			goto drain;
		}
	}
	if (o->sig && (si.si_fd != o->fd || si.si_code != POLL_IN))
		zdtm_fail("%s: signal %d with si_fd %d si_code %d, expected fd %d and POLL_IN",
			  o->name, sig, si.si_fd, si.si_code, o->fd);
drain:
	if (read(o->fd, &c, 1) != 1)
		zdtm_fail("%s: the byte written does not come out", o->name);
}

int main(int argc, char **argv)
{
	int file, p1[2], p2[2], p3[2], fifo, fifo_rw;
	pid_t pid = getpid(), pgrp = getpgrp(), tid = syscall(SYS_gettid);
	sigset_t pending;
	struct timespec now = { 0, 0 };
	siginfo_t si;
	char c;

	zdtm_init(argc, argv);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGIO);
	sigaddset(&sigs, SIGUSR1);
	sigaddset(&sigs, SIGRTMIN + 2);
	sigaddset(&sigs, SIGRTMIN + 3);
	if (sigprocmask(SIG_BLOCK, &sigs, NULL))
		zdtm_die("sigprocmask: %m");

	unlink("fifo");
	if ((file = open("file", O_CREAT | O_RDWR | O_TRUNC | O_ASYNC, 0644)) < 0)
		zdtm_die("open file: %m");
	if (pipe(p1) || pipe(p2) || pipe(p3))
		zdtm_die("pipe: %m");
	if (mkfifo("fifo", 0600) || (fifo_rw = open("fifo", O_RDWR)) < 0 ||
	    (fifo = open("fifo", O_RDONLY | O_NONBLOCK)) < 0)
		zdtm_die("fifo: %m");

	struct owned o[] = {
		{ "file", file, -1, F_OWNER_PID, pid, SIGUSR1, pid },
		{ "pipe1", p1[0], p1[1], F_OWNER_PID, pid, 0, pid },
		{ "pipe2", p2[0], p2[1], F_OWNER_PGRP, pgrp, SIGRTMIN + 2, -pgrp },
		{ "fifo", fifo, fifo_rw, F_OWNER_TID, tid, SIGRTMIN + 3, tid },
		{ "quiet", p3[0], p3[1], F_OWNER_TID, 0, 0, 0 },
	};
	const int n = sizeof(o) / sizeof(o[0]);

	for (int i = 0; i < n; i++)
		set_owner(&o[i]);

	zdtm_ready();
	zdtm_wait_check();

	for (int i = 0; i < n; i++)
		check_owner(&o[i]);
	if (sigpending(&pending))
		zdtm_fail("sigpending: %m");
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&sigs, s) && sigismember(&pending, s))
			zdtm_fail("signal %d is pending before any I/O", s);
	for (int i = 1; i < n - 1; i++)
		check_signal(&o[i]);

	/* the quiet pipe: nothing */
	if (write(p3[1], "q", 1) != 1 || read(p3[0], &c, 1) != 1)
		zdtm_fail("quiet: the pipe does not work");
	if (sigtimedwait(&sigs, &si, &now) >= 0)
		zdtm_fail("signal %d after a write to the pipe without an owner", si.si_signo);
	zdtm_pass_or_fail();
}

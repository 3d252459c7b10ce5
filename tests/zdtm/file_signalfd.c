/*
 * file_signalfd: signalfds and the signals they report.
 *
 *   SIGUSR1, SIGUSR2 and SIGRTMIN+1 are blocked.
 *   A  signalfd for {SIGUSR1, SIGRTMIN+1}, SFD_NONBLOCK | SFD_CLOEXEC
 *   B  signalfd for {SIGUSR2}, blocking
 *   Before READY, SIGUSR1 is raised and SIGRTMIN+1 queued with value 77:
 *   both stay pending.
 * On SIGTERM: the fdinfo sigmasks, F_GETFL and F_GETFD are as set; A
 * reports SIGUSR1 and SIGRTMIN+1 (with 77) and then EAGAIN; B has nothing
 * to read, and after kill(SIGUSR2) it reports SIGUSR2 (from our pid); A
 * does not report SIGUSR2.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

static int readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void check_mask(const char *name, int fd, uint64_t want)
{
	char path[64], buf[4096], *p;
	unsigned long long got = 0;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	p = strstr(buf, "sigmask:");
	if (!p || sscanf(p + 8, "%llx", &got) != 1 || got != want)
		zdtm_fail("%s: fdinfo sigmask %#llx, expected %#llx", name, got,
			  (unsigned long long)want);
}

int main(int argc, char **argv)
{
	sigset_t blocked, sa, sb;
	struct signalfd_siginfo si;
	int a, b, rt = SIGRTMIN + 1;
	int got_usr1 = 0, got_rt = 0;

	zdtm_init(argc, argv);
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGUSR1);
	sigaddset(&blocked, SIGUSR2);
	sigaddset(&blocked, rt);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
	sigemptyset(&sa);
	sigaddset(&sa, SIGUSR1);
	sigaddset(&sa, rt);
	sigemptyset(&sb);
	sigaddset(&sb, SIGUSR2);
	a = signalfd(-1, &sa, SFD_NONBLOCK | SFD_CLOEXEC);
	b = signalfd(-1, &sb, 0);
	if (a < 0 || b < 0)
		zdtm_die("signalfd: %m");
	raise(SIGUSR1);
	if (sigqueue(getpid(), rt, (union sigval){ .sival_int = 77 }))
		zdtm_die("sigqueue: %m");

	zdtm_ready();
	zdtm_wait_check();

	check_mask("A", a, (1ULL << (SIGUSR1 - 1)) | (1ULL << (rt - 1)));
	check_mask("B", b, 1ULL << (SIGUSR2 - 1));
	if (!(fcntl(a, F_GETFL) & O_NONBLOCK) || (fcntl(b, F_GETFL) & O_NONBLOCK))
		zdtm_fail("F_GETFL: O_NONBLOCK not only on A");
	if (fcntl(a, F_GETFD) != FD_CLOEXEC || fcntl(b, F_GETFD) != 0)
		zdtm_fail("F_GETFD: FD_CLOEXEC not only on A");

	if (readable(b))
		zdtm_fail("B: readable before SIGUSR2 was sent");
	for (int i = 0; i < 3; i++) {
		ssize_t r = read(a, &si, sizeof(si));

		if (r < 0) {
			if (errno != EAGAIN)
				zdtm_fail("A: read: %m");
			break;
		}
		if (r != sizeof(si)) {
			zdtm_fail("A: short read %zd", r);
			break;
		}
		if (si.ssi_signo == SIGUSR1)
			got_usr1++;
		else if ((int)si.ssi_signo == rt && si.ssi_int == 77)
			got_rt++;
		else
			zdtm_fail("A: unexpected signal %u (value %d)", si.ssi_signo, si.ssi_int);
	}
	if (got_usr1 != 1 || got_rt != 1)
		zdtm_fail("A: got SIGUSR1 %d times and SIGRTMIN+1 with 77 %d times, expected 1 and 1",
			  got_usr1, got_rt);

	kill(getpid(), SIGUSR2);
	if (readable(a))
		zdtm_fail("A: reports SIGUSR2");
	if (!readable(b))
		zdtm_fail("B: SIGUSR2 is not readable");
	else if (read(b, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != SIGUSR2 ||
		 (pid_t)si.ssi_pid != getpid())
		zdtm_fail("B: read something else than SIGUSR2 from us (signal %u pid %u)",
			  si.ssi_signo, si.ssi_pid);
	zdtm_pass_or_fail();
}

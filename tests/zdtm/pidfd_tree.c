/*
 * pidfd_tree: pidfds of processes that are neither the holder, nor its parent or child:
 *
 *   R (the test) -> A -> G        R holds a pidfd of its grandchild G;
 *                -> B             A holds a pidfd of its sibling B (forked after it).
 *
 * On SIGTERM R checks that its pidfd names G (fdinfo Pid:) and reaches it (signal 0), and
 * that A's pidfd (seen through /proc/A/fdinfo) names B, and that A's pidfd is O_NONBLOCK as
 * it was opened.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define A_FD 60

struct shared {
	volatile pid_t g, b;
	volatile int ready;
};

/* The value of `key` in /proc/PID/fdinfo/FD, or -2. */
static long fdinfo_field(pid_t pid, int fd, const char *key)
{
	char path[64], buf[1024], *p;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", pid, fd);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n < 0)
		return -2;
	buf[n] = 0;
	p = strstr(buf, key);
	if (!p)
		return -2;
	return strtol(p + strlen(key), NULL, 0);
}

int main(int argc, char **argv)
{
	struct shared *sh;
	pid_t a, b;
	int gfd;

	zdtm_init(argc, argv);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		zdtm_die("mmap");
	a = fork();
	if (a == 0) {
		pid_t g = fork();
		int fd;

		if (g == 0)
			for (;;)
				pause();
		sh->g = g;
		while (!sh->b)
			usleep(1000);
		fd = syscall(SYS_pidfd_open, sh->b, O_NONBLOCK);
		if (fd < 0 || dup2(fd, A_FD) != A_FD)
			_exit(3);
		close(fd);
		sh->ready = 1;
		for (;;)
			pause();
	}
	b = fork();
	if (b == 0)
		for (;;)
			pause();
	sh->b = b;
	while (!sh->ready || !sh->g)
		usleep(1000);
	gfd = syscall(SYS_pidfd_open, sh->g, 0);
	if (gfd < 0)
		zdtm_die("pidfd_open");
	zdtm_ready();
	zdtm_wait_check();

	if (fdinfo_field(getpid(), gfd, "Pid:") != sh->g)
		zdtm_fail("R's pidfd names %ld, not G (%d)", fdinfo_field(getpid(), gfd, "Pid:"), sh->g);
	if (syscall(SYS_pidfd_send_signal, gfd, 0, NULL, 0))
		zdtm_fail("signal 0 through R's pidfd: %m");
	if (fdinfo_field(a, A_FD, "Pid:") != b)
		zdtm_fail("A's pidfd names %ld, not B (%d)", fdinfo_field(a, A_FD, "Pid:"), b);
	if (!(fdinfo_field(a, A_FD, "flags:") & O_NONBLOCK))
		zdtm_fail("A's pidfd lost O_NONBLOCK (flags %lo)", fdinfo_field(a, A_FD, "flags:"));
	kill(sh->g, SIGKILL);
	kill(a, SIGKILL);
	kill(b, SIGKILL);
	while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
		;
	zdtm_pass_or_fail();
}

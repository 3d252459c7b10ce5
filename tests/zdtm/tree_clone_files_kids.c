/*
 * tree_clone_files_kids: processes that share their parent's fd table (CLONE_FILES) and have
 * children of their own.
 *
 *   A (the test) --clone(CLONE_FILES)--> B --fork--> C (its own copy of the table, plus a
 *                                          \          file "c_only" at fd 40)
 *                                           --clone(CLONE_FILES)--> D (shares it too)
 * On SIGTERM A checks with kcmp(KCMP_FILES) that A, B and D share one table and C has its
 * own, that C still has "c_only" at fd 40 and A does not, and that an fd A opens now shows
 * in B's and D's /proc/PID/fd but not in C's.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KCMP_FILES 2
#define STACK (256 * 1024)

struct shared {
	volatile int c, d;
};
static struct shared *sh;

static int same_files(pid_t a, pid_t b)
{
	return syscall(SYS_kcmp, a, b, KCMP_FILES, 0, 0) == 0;
}

static int has_fd(pid_t pid, int fd, const char *suffix)
{
	char path[64], l[256];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/fd/%d", pid, fd);
	n = readlink(path, l, sizeof(l) - 1);
	if (n < 0)
		return 0;
	l[n] = 0;
	return !suffix || (strlen(l) >= strlen(suffix) && !strcmp(l + strlen(l) - strlen(suffix), suffix));
}

static int d_main(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return 0;
}

static int b_main(void *arg)
{
	char *stack;
	pid_t c, d;

	(void)arg;
	c = fork();
	if (c == 0) {
		int fd = open("c_only", O_CREAT | O_RDWR, 0600);

		if (fd < 0 || dup2(fd, 40) != 40)
			_exit(3);
		close(fd);
		for (;;)
			pause();
	}
	stack = malloc(STACK);
	d = clone(d_main, stack + STACK, CLONE_FILES | SIGCHLD, NULL);
	sh->c = c;
	sh->d = d;
	for (;;)
		pause();
	return 0;
}

int main(int argc, char **argv)
{
	char *stack = malloc(STACK);
	pid_t b;
	int fd, i;

	zdtm_init(argc, argv);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		zdtm_die("mmap");
	b = clone(b_main, stack + STACK, CLONE_FILES | SIGCHLD, NULL);
	if (b < 0)
		zdtm_die("clone");
	for (i = 0; i < 200 && (!sh->c || !sh->d || !has_fd(sh->c, 40, "/c_only")); i++)
		usleep(10000);
	if (!sh->c || !sh->d || !has_fd(sh->c, 40, "/c_only"))
		zdtm_die("children not ready");
	zdtm_ready();
	zdtm_wait_check();

	if (!same_files(getpid(), b))
		zdtm_fail("A and B no longer share their fd table");
	if (!same_files(getpid(), sh->d))
		zdtm_fail("A and D no longer share their fd table");
	if (same_files(getpid(), sh->c))
		zdtm_fail("C shares A's fd table");
	if (!has_fd(sh->c, 40, "/c_only"))
		zdtm_fail("C lost its fd 40");
	if (has_fd(getpid(), 40, NULL))
		zdtm_fail("A has an fd 40");
	fd = open("/dev/null", O_RDONLY);
	if (!has_fd(b, fd, "/dev/null") || !has_fd(sh->d, fd, "/dev/null"))
		zdtm_fail("an fd A opened does not show in B and D");
	if (has_fd(sh->c, fd, "/dev/null"))
		zdtm_fail("an fd A opened shows in C");
	close(fd);
	kill(sh->c, SIGKILL);
	kill(sh->d, SIGKILL);
	kill(b, SIGKILL);
	while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR)
		;
	zdtm_pass_or_fail();
}

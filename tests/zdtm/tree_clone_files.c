/*
 * tree_clone_files: a child created with clone(CLONE_FILES | CLONE_FS), sharing the parent's
 * fd table and its cwd/umask (but not its memory). After restore the sharing must still be
 * there: an fd the parent opens is visible in the child, a chdir or umask by the child is
 * seen by the parent. A restore that gave each its own copy of the table or fs state fails.
 *
 * The child answers commands through a MAP_SHARED page and SIGUSR1; it never prints.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct shared {
	volatile int ready;
	volatile int cmd;  /* 1: check fd, 2: chdir + umask, 3: exit */
	volatile int arg;
	volatile int done; /* the number of the command carried out */
	volatile int result;
};

static struct shared *sh;
static volatile sig_atomic_t kicked;

static void on_usr1(int sig)
{
	(void)sig;
	kicked = 1;
}

static int child_main(void *unused)
{
	(void)unused;
	sigset_t none;
	sigemptyset(&none);
	sh->ready = 1;
	for (;;) {
		while (!kicked)
			sigsuspend(&none);
		kicked = 0;
		int cmd = sh->cmd;
		if (cmd == 1)
			sh->result = fcntl(sh->arg, F_GETFD) != -1;
		else if (cmd == 2)
			sh->result = chdir("sub") == 0 && (umask(0077), 1);
		sh->done = cmd;
		if (cmd == 3)
			_exit(0);
	}
}

static int ask(pid_t child, int cmd, int arg)
{
	sh->arg = arg;
	sh->cmd = cmd;
	kill(child, SIGUSR1);
	for (int i = 0; i < 2000 && sh->done != cmd; i++)
		usleep(1000);
	return sh->done == cmd ? sh->result : -1;
}

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		zdtm_die("mmap: %s", strerror(errno));
	if (mkdir("sub", 0755) && errno != EEXIST)
		zdtm_die("mkdir: %s", strerror(errno));
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	umask(022);
	static char stack[256 * 1024];
	pid_t child = clone(child_main, stack + sizeof(stack), CLONE_FILES | CLONE_FS | SIGCHLD, NULL);
	if (child < 0)
		zdtm_die("clone: %s", strerror(errno));
	while (!sh->ready)
		usleep(1000);
	char before[PATH_MAX];
	if (!getcwd(before, sizeof(before)))
		zdtm_die("getcwd: %s", strerror(errno));
	zdtm_ready();

	zdtm_wait_check();

	/* An fd opened by the parent now must exist in the child. */
	int fd = open("/dev/null", O_RDONLY);
	int seen = ask(child, 1, fd);
	if (seen != 1)
		zdtm_fail("fd %d opened by the parent is %s in the child: the fd table is not shared", fd,
			  seen < 0 ? "(no answer)" : "missing");
	/* A chdir and umask by the child must show in the parent. */
	if (ask(child, 2, 0) != 1)
		zdtm_fail("the child could not chdir");
	char after[PATH_MAX];
	if (!getcwd(after, sizeof(after)))
		zdtm_fail("getcwd: %s", strerror(errno));
	else if (strlen(after) != strlen(before) + 4 || strncmp(after, before, strlen(before)) ||
		 strcmp(after + strlen(before), "/sub"))
		zdtm_fail("cwd is %s after the child's chdir to sub (was %s): fs state not shared", after,
			  before);
	mode_t m = umask(022);
	if (m != 0077)
		zdtm_fail("umask is %03o after the child set 077: fs state not shared", (unsigned)m);
	ask(child, 3, 0);
	int status;
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
		zdtm_fail("the child did not exit cleanly (status %#x)", status);
	zdtm_pass_or_fail();
}

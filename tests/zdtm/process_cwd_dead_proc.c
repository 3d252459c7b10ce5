/*
 * process_cwd_dead_proc: a cwd in the /proc directory of a process that has died (a child
 * entered through /proc/PID, then killed and reaped). On SIGTERM the cwd link still reads
 * "/proc/PID (deleted)" with the same PID, and the directory is still dead: its entries do
 * not open (ESRCH or ENOENT) and getcwd fails.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char path[64], want[96], l[256], buf[256];
	pid_t c;
	ssize_t n;
	int fd;

	zdtm_init(argc, argv);
	c = fork();
	if (c == 0) {
		pause();
		_exit(0);
	}
	snprintf(path, sizeof(path), "/proc/%d", c);
	if (chdir(path))
		zdtm_die("chdir %s", path);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	snprintf(want, sizeof(want), "/proc/%d (deleted)", c);
	zdtm_ready();
	zdtm_wait_check();

	n = readlink("/proc/self/cwd", l, sizeof(l) - 1);
	l[n > 0 ? n : 0] = 0;
	if (strcmp(l, want))
		zdtm_fail("cwd is %s, not %s", l, want);
	fd = open("status", O_RDONLY);
	if (fd >= 0 || (errno != ESRCH && errno != ENOENT))
		zdtm_fail("status of the dead process opens (%d, %m)", fd);
	if (getcwd(buf, sizeof(buf)))
		zdtm_fail("getcwd works: %s", buf);
	zdtm_pass_or_fail();
}

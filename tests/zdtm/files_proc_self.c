/* files_proc_self: fds of the process's own /proc entries (/proc/self/status, the
 * /proc/self/fd directory as a DIR stream) and of its network namespace file. On SIGTERM they
 * read the restored process's state (its pid, its fds) and the namespace is its own. */
#include "zdtm.h"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	int st, ns, nfd = 0, want_fds = 0;
	DIR *d;
	struct dirent *de;
	char buf[4096], want[64];
	struct stat a, b;
	ssize_t n;
	zdtm_init(argc, argv);
	st = open("/proc/self/status", O_RDONLY);
	ns = open("/proc/self/ns/net", O_RDONLY);
	d = opendir("/proc/self/fd");
	if (st < 0 || ns < 0 || !d) zdtm_die("open");
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			want_fds++;
	zdtm_ready();
	zdtm_wait_check();
	n = pread(st, buf, sizeof(buf) - 1, 0);
	buf[n > 0 ? n : 0] = 0;
	snprintf(want, sizeof(want), "\nPid:\t%d\n", getpid());
	if (!strstr(buf, want)) zdtm_fail("status");
	if (fstat(ns, &a) || stat("/proc/self/ns/net", &b) || a.st_ino != b.st_ino) zdtm_fail("ns");
	rewinddir(d);
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			nfd++;
	if (nfd != want_fds) zdtm_fail("%d fds listed in /proc/self/fd, not %d", nfd, want_fds);
	zdtm_pass_or_fail();
}

/*
 * files_deleted_dir: directories removed while held.
 *
 * "held" (mode 0750, owner 4321:4322) is opened O_RDONLY|O_DIRECTORY and
 * removed; "cwd" (mode 0711) becomes the cwd and is removed.  On SIGTERM
 * the fd and the cwd must still be deleted directories (st_nlink 0,
 * S_ISDIR, links ending in " (deleted)" after the old path), with their
 * modes and owner, empty, refusing new entries (ENOENT) and the fd's flags;
 * fchdir to the held fd works.
 */
#include "zdtm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void check_link(const char *proc, const char *want)
{
	char link[PATH_MAX], exp[PATH_MAX];
	ssize_t n = readlink(proc, link, sizeof(link) - 1);

	link[n < 0 ? 0 : n] = 0;
	snprintf(exp, sizeof(exp), "%s (deleted)", want);
	if (strcmp(link, exp))
		zdtm_fail("%s -> \"%s\", expected \"%s\"", proc, link, exp);
}

static void check_dir(int fd, const char *what, unsigned mode, int uid, int gid)
{
	struct stat st;
	struct dirent *e;
	DIR *d;
	int n = 0, dup_fd;

	if (fstat(fd, &st))
		zdtm_die("fstat %s: %m", what);
	if (!S_ISDIR(st.st_mode) || st.st_nlink != 0 || (st.st_mode & 07777) != mode)
		zdtm_fail("%s: mode %#o nlink %ld, expected a deleted directory %#o", what,
			  st.st_mode, (long)st.st_nlink, mode);
	if ((int)st.st_uid != uid || (int)st.st_gid != gid)
		zdtm_fail("%s: owner %d:%d, expected %d:%d", what, (int)st.st_uid,
			  (int)st.st_gid, uid, gid);
	if (openat(fd, "new", O_CREAT | O_WRONLY, 0600) >= 0 || errno != ENOENT)
		zdtm_fail("%s: a new entry was not refused with ENOENT: %m", what);
	dup_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY);
	d = dup_fd < 0 ? NULL : fdopendir(dup_fd);
	if (!d)
		zdtm_die("opendir %s: %m", what);
	while ((e = readdir(d)))
		n++;
	closedir(d);
	if (n != 0)
		zdtm_fail("%s: %d entries, a deleted directory lists none", what, n);
}

int main(int argc, char **argv)
{
	char top[PATH_MAX], held[PATH_MAX + 8], cwd[PATH_MAX + 8], proc[64];
	int fd, flags, here;

	zdtm_init(argc, argv);
	if (!getcwd(top, sizeof(top)))
		zdtm_die("getcwd: %m");
	snprintf(held, sizeof(held), "%s/held", top);
	snprintf(cwd, sizeof(cwd), "%s/cwd", top);
	if (mkdir("held", 0700) || chown("held", 4321, 4322) || chmod("held", 0750) ||
	    mkdir("cwd", 0700) || chmod("cwd", 0711))
		zdtm_die("mkdir: %m");
	fd = open("held", O_RDONLY | O_DIRECTORY);
	here = open(".", O_RDONLY | O_DIRECTORY);
	if (fd < 0 || here < 0 || rmdir("held") || chdir("cwd") || rmdir(cwd))
		zdtm_die("open/rmdir/chdir: %m");
	flags = fcntl(fd, F_GETFL);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);

	zdtm_ready();
	zdtm_wait_check();

	check_link(proc, held);
	check_link("/proc/self/cwd", cwd);
	if (fcntl(fd, F_GETFL) != flags)
		zdtm_fail("F_GETFL %#o, expected %#o", fcntl(fd, F_GETFL), flags);
	check_dir(fd, "held", 0750, 4321, 4322);
	here = open(".", O_RDONLY | O_DIRECTORY);
	if (here < 0)
		zdtm_die("open .: %m");
	check_dir(here, "cwd", 0711, 0, 0);
	if (fchdir(fd))
		zdtm_fail("fchdir to the held directory: %m");
	zdtm_pass_or_fail();
}

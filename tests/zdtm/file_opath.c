/*
 * file_opath: O_PATH descriptors.
 *
 *   file:  O_PATH opened through the symlink "link" (it follows the link:
 *          the fd is the file)
 *   link:  O_PATH|O_NOFOLLOW on the symlink "link" (the fd is the link
 *          itself), FD_CLOEXEC
 *   dir:   O_PATH|O_DIRECTORY on the directory "dir"
 *   fifo:  O_PATH on the FIFO "fifo" (opening it did not wait for a peer)
 *   plain: O_PATH|O_NOFOLLOW on the regular file "plain", twice the same
 *          description (dup)
 *
 * On SIGTERM: F_GETFL (O_PATH and the O_NOFOLLOW/O_DIRECTORY given) and
 * F_GETFD of every fd; fstat of each is the object at its path (lstat for
 * the link); readlinkat(link, "") gives the link's target; openat(dir,
 * "inside") reads the file in dir; /proc/self/fd/N of the file fd opens
 * the file for reading; read() on an O_PATH fd fails with EBADF; the dup'ed
 * fds share one description (kcmp).
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

struct opath {
	const char *name;
	const char *path;
	int flags;
	int follow;	/* compare with stat (else lstat) */
	int fd, fl, fdfl;
};

static void same_object(struct opath *o)
{
	struct stat a, b;

	if (fstat(o->fd, &a)) {
		zdtm_fail("%s: fstat fd %d: %m", o->name, o->fd);
		return;
	}
	if ((o->follow ? stat(o->path, &b) : lstat(o->path, &b)) != 0) {
		zdtm_fail("%s: stat %s: %m", o->name, o->path);
		return;
	}
	if (a.st_ino != b.st_ino || a.st_dev != b.st_dev || a.st_mode != b.st_mode)
		zdtm_fail("%s: fd %d is inode %lu mode %o, %s is inode %lu mode %o", o->name, o->fd,
			  (unsigned long)a.st_ino, a.st_mode, o->path, (unsigned long)b.st_ino,
			  b.st_mode);
}

int main(int argc, char **argv)
{
	struct opath o[] = {
		{ "file", "link", O_PATH, 1 },
		{ "link", "link", O_PATH | O_NOFOLLOW | O_CLOEXEC, 0 },
		{ "dir", "dir", O_PATH | O_DIRECTORY, 1 },
		{ "fifo", "fifo", O_PATH, 1 },
		{ "plain", "plain", O_PATH | O_NOFOLLOW, 1 },
	};
	const int n = sizeof(o) / sizeof(o[0]);
	char target[64], path[64], got[64];
	int plain_dup, fd;
	ssize_t r;
	pid_t pid = getpid();

	zdtm_init(argc, argv);
	unlink("link");
	unlink("file");
	unlink("plain");
	unlink("fifo");
	unlink("dir/inside");
	rmdir("dir");
	if ((fd = open("file", O_CREAT | O_WRONLY | O_TRUNC, 0644)) < 0 || write(fd, "file!", 5) != 5)
		zdtm_die("create file: %m");
	close(fd);
	if ((fd = open("plain", O_CREAT | O_WRONLY | O_TRUNC, 0600)) < 0)
		zdtm_die("create plain: %m");
	close(fd);
	if (symlink("file", "link") || mkdir("dir", 0755) || mkfifo("fifo", 0600))
		zdtm_die("symlink, mkdir, mkfifo: %m");
	if ((fd = open("dir/inside", O_CREAT | O_WRONLY | O_TRUNC, 0644)) < 0 ||
	    write(fd, "inside", 6) != 6)
		zdtm_die("create dir/inside: %m");
	close(fd);
	for (int i = 0; i < n; i++) {
		if ((o[i].fd = open(o[i].path, o[i].flags)) < 0)
			zdtm_die("open %s: %m", o[i].path);
		o[i].fl = fcntl(o[i].fd, F_GETFL);
		o[i].fdfl = fcntl(o[i].fd, F_GETFD);
	}
	if ((plain_dup = dup(o[4].fd)) < 0)
		zdtm_die("dup: %m");

	zdtm_ready();
	zdtm_wait_check();

	for (int i = 0; i < n; i++) {
		if (fcntl(o[i].fd, F_GETFL) != o[i].fl)
			zdtm_fail("%s: F_GETFL %#o, expected %#o", o[i].name, fcntl(o[i].fd, F_GETFL),
				  o[i].fl);
		if (!(fcntl(o[i].fd, F_GETFL) & O_PATH))
			zdtm_fail("%s: not an O_PATH descriptor", o[i].name);
		if (fcntl(o[i].fd, F_GETFD) != o[i].fdfl)
			zdtm_fail("%s: F_GETFD %d, expected %d", o[i].name, fcntl(o[i].fd, F_GETFD),
				  o[i].fdfl);
		same_object(&o[i]);
		if (read(o[i].fd, got, 1) != -1 || errno != EBADF)
			zdtm_fail("%s: read on an O_PATH fd did not fail with EBADF", o[i].name);
	}

	/* the link itself */
	r = readlinkat(o[1].fd, "", target, sizeof(target) - 1);
	target[r > 0 ? r : 0] = 0;
	if (r < 0 || strcmp(target, "file"))
		zdtm_fail("link: readlinkat(fd, \"\") gave \"%s\" (%zd), expected \"file\"", target, r);

	/* openat in the directory */
	if ((fd = openat(o[2].fd, "inside", O_RDONLY)) < 0)
		zdtm_fail("dir: openat(\"inside\"): %m");
	else {
		r = read(fd, got, sizeof(got));
		if (r != 6 || memcmp(got, "inside", 6))
			zdtm_fail("dir: dir/inside reads %zd bytes", r);
		close(fd);
	}

	/* the file, reopened for reading through /proc */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", o[0].fd);
	if ((fd = open(path, O_RDONLY)) < 0)
		zdtm_fail("file: open %s: %m", path);
	else {
		r = read(fd, got, sizeof(got));
		if (r != 5 || memcmp(got, "file!", 5))
			zdtm_fail("file: reads %zd bytes", r);
		close(fd);
	}

	/* one description at two fds */
	if (syscall(SYS_kcmp, pid, pid, KCMP_FILE, o[4].fd, plain_dup) != 0)
		zdtm_fail("plain: fds %d and %d are not one description", o[4].fd, plain_dup);
	if (syscall(SYS_kcmp, pid, pid, KCMP_FILE, o[0].fd, o[4].fd) == 0)
		zdtm_fail("file and plain share a description");
	zdtm_pass_or_fail();
}

/*
 * file_fanotify: a fanotify group (FAN_CLASS_NOTIF, non-blocking) with a mark on a file
 * (FAN_MODIFY, with an ignore mask that survives modification), a mark on a directory
 * (FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD) and a mark on the mount of the work directory
 * (FAN_OPEN). On SIGTERM the group's flags are the same, fdinfo lists the same three marks,
 * and each mark reports its events: writing to the file, closing a new file of the
 * directory after writing, opening a file of the mount.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <unistd.h>

static int count_marks(int fa)
{
	char path[64], buf[8192], *p;
	ssize_t n;
	int marks = 0;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fa);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n < 0)
		return -1;
	buf[n] = 0;
	for (p = buf; (p = strstr(p, "fanotify ")); p++)
		if (strncmp(p, "fanotify flags:", 15))
			marks++;
	return marks;
}

/* Reads events until one has a mask with `bit`, for up to 2 s. */
static int wait_event(int fa, unsigned long long bit)
{
	char buf[8192];
	struct pollfd p = { .fd = fa, .events = POLLIN };
	int tries;

	for (tries = 0; tries < 20; tries++) {
		ssize_t n;
		struct fanotify_event_metadata *m;

		if (poll(&p, 1, 100) != 1)
			continue;
		n = read(fa, buf, sizeof(buf));
		if (n <= 0)
			continue;
		for (m = (void *)buf; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
			if (m->fd >= 0)
				close(m->fd);
			if (m->mask & bit)
				return 1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	int fa, fd, marks, flags;

	zdtm_init(argc, argv);
	if (mkdir("dir", 0755) && errno != EEXIST)
		zdtm_die("mkdir");
	fd = open("file", O_CREAT | O_RDWR, 0600);
	if (fd < 0)
		zdtm_die("open");
	close(fd);
	fa = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
	if (fa < 0)
		zdtm_die("fanotify_init: %m");
	if (fanotify_mark(fa, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, "file") ||
	    fanotify_mark(fa, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
			  FAN_CLOSE_NOWRITE, AT_FDCWD, "file") ||
	    fanotify_mark(fa, FAN_MARK_ADD, FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD, AT_FDCWD, "dir") ||
	    fanotify_mark(fa, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN, AT_FDCWD, "."))
		zdtm_die("fanotify_mark: %m");
	marks = count_marks(fa);
	flags = fcntl(fa, F_GETFL);
	zdtm_ready();
	zdtm_wait_check();

	if (fcntl(fa, F_GETFL) != flags || !(flags & O_NONBLOCK))
		zdtm_fail("flags %#x, not %#x", fcntl(fa, F_GETFL), flags);
	if (count_marks(fa) != marks)
		zdtm_fail("%d marks, not %d", count_marks(fa), marks);
	/* drain what the restore caused */
	wait_event(fa, 0);
	fd = open("file", O_WRONLY);
	if (fd < 0 || write(fd, "x", 1) != 1)
		zdtm_fail("write file");
	if (!wait_event(fa, FAN_MODIFY))
		zdtm_fail("no FAN_MODIFY event on file");
	close(fd);
	fd = open("dir/new", O_CREAT | O_WRONLY | O_TRUNC, 0600);
	if (fd < 0 || write(fd, "y", 1) != 1)
		zdtm_fail("write dir/new");
	close(fd);
	if (!wait_event(fa, FAN_CLOSE_WRITE))
		zdtm_fail("no FAN_CLOSE_WRITE event in dir");
	unlink("dir/new");
	fd = open("file", O_RDONLY);
	close(fd);
	if (!wait_event(fa, FAN_OPEN))
		zdtm_fail("no FAN_OPEN event on the mount");
	if (ftruncate(open("file", O_WRONLY), 0))
		zdtm_fail("truncate");
	zdtm_pass_or_fail();
}

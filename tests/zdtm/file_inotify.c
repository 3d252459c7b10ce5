/*
 * file_inotify: inotify instances, their watches and watch descriptors.
 *
 *   A  inotify_init1(IN_NONBLOCK | IN_CLOEXEC), watches (in the cwd):
 *        wd 1   dir d1        IN_CREATE | IN_DELETE
 *        wd 2   file f2       IN_MODIFY                  removed again
 *        wd 3   file f3       IN_MODIFY | IN_CLOSE_WRITE
 *        wd 4   dir d4        IN_CREATE | IN_ONLYDIR | IN_EXCL_UNLINK
 *        wd 5-9 burnt (a watch on f2 added and removed five times)
 *        wd 10  file f5       IN_ATTRIB | IN_ONESHOT
 *        wd 11  symlink l6    IN_ATTRIB | IN_DONT_FOLLOW (l6 -> f6)
 *        wd 12  dir d7        IN_OPEN, where file d7/m is mapped (MAP_SHARED,
 *                             its fd closed): a restore opens it again
 *   B  inotify_init1(0), blocking, also at fd 50 (dup2: one description):
 *        wd 1   dir d8        IN_CREATE
 * Every event is read before READY. On SIGTERM: the inotify lines of both
 * fdinfos (wd, inode, device, mask, file handle) are as before; F_GETFL and
 * F_GETFD as set; nothing is queued; then each object gets an event and
 * exactly the expected events arrive, with the right wd, mask and name: the
 * removed wd 2 stays silent, the one-shot wd 10 fires once (then
 * IN_IGNORED), wd 11 watches the symlink, not its target, wd 12 reports an
 * open of d7/m (and nothing before); a new watch gets wd 13; B reports a file created in d8, read through fd 50 after O_NONBLOCK
 * was set on B (one description). The files are put back as they were, so
 * that a second restore from the same images finds them so.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct ev {
	int wd;
	uint32_t mask;
	const char *name;
};

static int watch(int fd, const char *path, uint32_t mask, int want)
{
	int wd = inotify_add_watch(fd, path, mask);

	if (wd != want)
		zdtm_die("inotify_add_watch(%s) = %d (%m), expected %d", path, wd, want);
	return wd;
}

static void create(const char *path)
{
	int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);

	if (fd < 0 || close(fd))
		zdtm_die("create %s: %m", path);
}

/* The sorted "inotify ..." lines of fd's fdinfo, into buf. */
static void watch_lines(int fd, char *buf, size_t size)
{
	char path[64], text[8192], *lines[64], *save, *l;
	int n = 0;
	ssize_t len;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	len = zdtm_read_file(path, text, sizeof(text) - 1);
	buf[0] = 0;
	if (len < 0)
		return;
	text[len] = 0;
	for (l = strtok_r(text, "\n", &save); l && n < 64; l = strtok_r(NULL, "\n", &save))
		if (!strncmp(l, "inotify ", 8))
			lines[n++] = l;
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (strcmp(lines[j], lines[i]) < 0) {
				char *t = lines[i];

				lines[i] = lines[j];
				lines[j] = t;
			}
	for (int i = 0; i < n; i++) {
		strncat(buf, lines[i], size - strlen(buf) - 2);
		strcat(buf, "\n");
	}
}

/* Reads every queued event of fd (which must not block) and checks them
 * against want[0..n), in order. */
static void expect(const char *when, int fd, const struct ev *want, int n)
{
	char buf[4096] __attribute__((aligned(8)));
	int got = 0;

	for (;;) {
		ssize_t len = read(fd, buf, sizeof(buf));

		if (len < 0 && errno == EINTR)
			continue;
		if (len < 0) {
			if (errno != EAGAIN)
				zdtm_fail("%s: read: %m", when);
			break;
		}
		for (char *p = buf; p < buf + len;) {
			struct inotify_event *e = (struct inotify_event *)p;
			const char *name = e->len ? e->name : "";

			if (got >= n)
				zdtm_fail("%s: unexpected event wd %d mask %#x name '%s'", when, e->wd,
					  e->mask, name);
			else if (e->wd != want[got].wd || e->mask != want[got].mask ||
				 strcmp(name, want[got].name))
				zdtm_fail("%s: event %d is wd %d mask %#x name '%s', expected wd %d "
					  "mask %#x name '%s'",
					  when, got, e->wd, e->mask, name, want[got].wd, want[got].mask,
					  want[got].name);
			got++;
			p += sizeof(*e) + e->len;
		}
	}
	if (got < n)
		zdtm_fail("%s: %d events, expected %d", when, got, n);
}

static void check_flags(const char *what, int fd, int fl, int fdfl)
{
	int got = fcntl(fd, F_GETFL), gotfd = fcntl(fd, F_GETFD);

	if (got < 0 || (got & (O_NONBLOCK | O_ACCMODE)) != fl)
		zdtm_fail("%s: F_GETFL %#x, expected %#x", what, got, fl);
	if (gotfd != fdfl)
		zdtm_fail("%s: F_GETFD %#x, expected %#x", what, gotfd, fdfl);
}

int main(int argc, char **argv)
{
	static char before_a[4096], before_b[4096], after[4096];
	struct timespec no_times[2] = { { 0, UTIME_NOW }, { 0, UTIME_NOW } };
	int a, b, fd;
	char *map;

	zdtm_init(argc, argv);
	if (mkdir("d1", 0755) || mkdir("d4", 0755) || mkdir("d7", 0755) || mkdir("d8", 0755) ||
	    symlink("f6", "l6"))
		zdtm_die("mkdir/symlink: %m");
	create("f2");
	create("f3");
	create("f5");
	create("f6");
	fd = open("d7/m", O_CREAT | O_RDWR, 0644);
	if (fd < 0 || ftruncate(fd, 4096))
		zdtm_die("d7/m: %m");
	map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED || close(fd))
		zdtm_die("mmap: %m");
	map[0] = 'm';
	a = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	b = inotify_init1(0);
	if (a < 0 || b < 0)
		zdtm_die("inotify_init1: %m");
	watch(a, "d1", IN_CREATE | IN_DELETE, 1);
	watch(a, "f2", IN_MODIFY, 2);
	watch(a, "f3", IN_MODIFY | IN_CLOSE_WRITE, 3);
	watch(a, "d4", IN_CREATE | IN_ONLYDIR | IN_EXCL_UNLINK, 4);
	if (inotify_rm_watch(a, 2))
		zdtm_die("inotify_rm_watch: %m");
	for (int wd = 5; wd <= 9; wd++)
		if (inotify_rm_watch(a, watch(a, "f2", IN_MODIFY, wd)))
			zdtm_die("inotify_rm_watch: %m");
	watch(a, "f5", IN_ATTRIB | IN_ONESHOT, 10);
	watch(a, "l6", IN_ATTRIB | IN_DONT_FOLLOW, 11);
	watch(a, "d7", IN_OPEN, 12);
	watch(b, "d8", IN_CREATE, 1);
	if (dup2(b, 50) != 50)
		zdtm_die("dup2: %m");
	{
		struct ev ignored[] = { { 2, IN_IGNORED, "" }, { 5, IN_IGNORED, "" },
					{ 6, IN_IGNORED, "" }, { 7, IN_IGNORED, "" },
					{ 8, IN_IGNORED, "" }, { 9, IN_IGNORED, "" } };

		expect("setup", a, ignored, 6);
	}
	watch_lines(a, before_a, sizeof(before_a));
	watch_lines(b, before_b, sizeof(before_b));
	if (!strstr(before_a, "inotify wd:c ") || strstr(before_a, "inotify wd:2 "))
		zdtm_die("unexpected fdinfo:\n%s", before_a);

	zdtm_ready();
	zdtm_wait_check();

	watch_lines(a, after, sizeof(after));
	if (strcmp(after, before_a))
		zdtm_fail("the watches of A changed:\n%swere:\n%s", after, before_a);
	watch_lines(50, after, sizeof(after));
	if (strcmp(after, before_b))
		zdtm_fail("the watches of B (fd 50) changed:\n%swere:\n%s", after, before_b);
	check_flags("A", a, O_RDONLY | O_NONBLOCK, FD_CLOEXEC);
	check_flags("B", b, O_RDONLY, 0);
	{
		struct pollfd p = { .fd = b, .events = POLLIN };

		if (poll(&p, 1, 0) != 0)
			zdtm_fail("B has events queued");
	}
	expect("after the restore", a, NULL, 0);

	create("d1/new1");
	if (unlink("d1/new1"))
		zdtm_fail("unlink: %m");
	{
		struct ev w[] = { { 1, IN_CREATE, "new1" }, { 1, IN_DELETE, "new1" } };

		expect("d1", a, w, 2);
	}
	fd = open("f2", O_WRONLY);
	if (fd < 0 || write(fd, "x", 1) != 1 || close(fd))
		zdtm_fail("write f2: %m");
	expect("f2 (watch removed)", a, NULL, 0);
	fd = open("f3", O_WRONLY);
	if (fd < 0 || write(fd, "x", 1) != 1 || close(fd))
		zdtm_fail("write f3: %m");
	{
		struct ev w[] = { { 3, IN_MODIFY, "" }, { 3, IN_CLOSE_WRITE, "" } };

		expect("f3", a, w, 2);
	}
	if (mkdir("d4/sub", 0755))
		zdtm_fail("mkdir: %m");
	{
		struct ev w[] = { { 4, IN_CREATE | IN_ISDIR, "sub" } };

		expect("d4", a, w, 1);
	}
	if (chmod("f5", 0600))
		zdtm_fail("chmod: %m");
	{
		struct ev w[] = { { 10, IN_ATTRIB, "" }, { 10, IN_IGNORED, "" } };

		expect("f5 (one-shot)", a, w, 2);
	}
	if (chmod("f5", 0644))
		zdtm_fail("chmod: %m");
	expect("f5 again (the one-shot fired already)", a, NULL, 0);
	if (chmod("f6", 0600))
		zdtm_fail("chmod: %m");
	expect("f6 (the target of the watched symlink)", a, NULL, 0);
	if (utimensat(AT_FDCWD, "l6", no_times, AT_SYMLINK_NOFOLLOW))
		zdtm_fail("utimensat: %m");
	{
		struct ev w[] = { { 11, IN_ATTRIB, "" } };

		expect("l6", a, w, 1);
	}
	fd = open("d7/m", O_RDONLY);
	if (fd < 0 || close(fd))
		zdtm_fail("open d7/m: %m");
	if (map[0] != 'm')
		zdtm_fail("the mapping of d7/m lost its byte");
	{
		struct ev w[] = { { 12, IN_OPEN, "m" } };

		expect("d7", a, w, 1);
	}
	if (inotify_add_watch(a, "f2", IN_MODIFY) != 13)
		zdtm_fail("a new watch did not get wd 13");
	fd = open("f2", O_WRONLY);
	if (fd < 0 || write(fd, "y", 1) != 1 || close(fd))
		zdtm_fail("write f2: %m");
	{
		struct ev w[] = { { 13, IN_MODIFY, "" } };

		expect("f2 (new watch)", a, w, 1);
	}

	if (fcntl(b, F_SETFL, O_NONBLOCK))
		zdtm_fail("F_SETFL: %m");
	check_flags("fd 50 after F_SETFL on B", 50, O_RDONLY | O_NONBLOCK, 0);
	create("d8/bnew");
	{
		struct ev w[] = { { 1, IN_CREATE, "bnew" } };

		expect("B through fd 50", 50, w, 1);
	}
	expect("A after B's event", a, NULL, 0);
	if (rmdir("d4/sub") || unlink("d8/bnew") || chmod("f6", 0644))
		zdtm_fail("putting the files back: %m");
	zdtm_pass_or_fail();
}

/*
 * files_deleted: an open file that has been unlinked.
 *
 * "gone.dat" (20 KiB of pattern) is opened O_RDWR, positioned at offset
 * 5000 and unlinked; then a new, different file is created under the same
 * name (3000 bytes of another pattern) and closed.  On SIGTERM the fd
 * must still refer to a deleted file (st_nlink == 0, /proc/self/fd/N ends
 * with " (deleted)") with the old size, content, offset and flags, and be
 * writable; the new "gone.dat" on disk must be untouched (the restore
 * must not have resurrected or overwritten anything under that name).
 */
#include "zdtm.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OLD_SIZE (20 * 1024)
#define NEW_SIZE 3000

static char buf[OLD_SIZE];

int main(int argc, char **argv)
{
	char link[PATH_MAX], path[64];
	const char *suffix = " (deleted)";
	struct stat st;
	int fd, fl, flags;
	ssize_t n;

	zdtm_init(argc, argv);
	fd = open("gone.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		zdtm_die("open: %m");
	zdtm_fill(buf, OLD_SIZE, 21);
	if (write(fd, buf, OLD_SIZE) != OLD_SIZE || lseek(fd, 5000, SEEK_SET) != 5000)
		zdtm_die("write: %m");
	if (unlink("gone.dat"))
		zdtm_die("unlink: %m");
	fl = open("gone.dat", O_WRONLY | O_CREAT | O_EXCL, 0644);
	zdtm_fill(buf, NEW_SIZE, 22);
	if (fl < 0 || write(fl, buf, NEW_SIZE) != NEW_SIZE)
		zdtm_die("recreate gone.dat: %m");
	close(fl);
	flags = fcntl(fd, F_GETFL);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

	zdtm_ready();
	zdtm_wait_check();

	if (fstat(fd, &st))
		zdtm_die("fstat(%d): %m", fd);
	if (st.st_nlink != 0)
		zdtm_fail("st_nlink = %ld, expected 0", (long)st.st_nlink);
	if (st.st_size != OLD_SIZE)
		zdtm_fail("size %lld, expected %d", (long long)st.st_size, OLD_SIZE);
	if (lseek(fd, 0, SEEK_CUR) != 5000)
		zdtm_fail("offset %lld, expected 5000", (long long)lseek(fd, 0, SEEK_CUR));
	if (fcntl(fd, F_GETFL) != flags)
		zdtm_fail("F_GETFL %#o, expected %#o", fcntl(fd, F_GETFL), flags);
	n = readlink(path, link, sizeof(link) - 1);
	link[n < 0 ? 0 : n] = 0;
	if (n < (ssize_t)strlen(suffix) || strcmp(link + n - strlen(suffix), suffix))
		zdtm_fail("%s -> \"%s\", expected a deleted file", path, link);

	memset(buf, 0, sizeof(buf));
	if (pread(fd, buf, OLD_SIZE, 0) != OLD_SIZE || zdtm_check(buf, OLD_SIZE, 21) != OLD_SIZE)
		zdtm_fail("content of the deleted file differs");
	if (write(fd, "hello", 5) != 5 || pread(fd, buf, 5, 5000) != 5 || memcmp(buf, "hello", 5))
		zdtm_fail("cannot write to the deleted file");

	fl = open("gone.dat", O_RDONLY);
	memset(buf, 0, sizeof(buf));
	if (fl < 0 || read(fl, buf, sizeof(buf)) != NEW_SIZE || zdtm_check(buf, NEW_SIZE, 22) != NEW_SIZE)
		zdtm_fail("the new gone.dat on disk differs");
	if (fl >= 0 && fstat(fl, &st) == 0 && st.st_nlink != 1)
		zdtm_fail("the new gone.dat has %ld links", (long)st.st_nlink);
	zdtm_pass_or_fail();
}

/*
 * files_deleted_linked: deleted names of files that keep a hard link elsewhere.
 *
 * "linked.dat" (16 KiB of pattern) is opened O_RDWR, a second name "other.dat" is
 * linked to it and "linked.dat" is unlinked; then 100 bytes are
 * written through the fd (at 16 KiB), the offset is left at 5000, the fd is dup'ed (one
 * description), a second description is opened through /proc/self/fd (O_RDONLY, offset
 * 77) and the file is mapped MAP_SHARED read-write.  "mapped.dat" (8 KiB) is linked as
 * "mapped-other.dat", mapped MAP_SHARED read-write, its fd closed and "mapped.dat"
 * unlinked: a file only mapped.  A child ("c1") inherits all of it: the fds (the
 * same descriptions) and both mappings.
 *
 * On SIGTERM: every fd and mapping is that very file (st_dev/st_ino of fstat and of
 * /proc/self/map_files equal stat of the other name), the fds read "linked.dat
 * (deleted)", "linked.dat" does not exist, contents, offsets (shared by the dup, not by
 * the second description) and flags are kept; a write through the fd shows through the
 * other name and in the mapping, a store into each mapping shows through the other
 * name (and is put back afterwards: the files are shared with other runs).  The child
 * checks the same of its fds and mappings, and moves the offset it shares with the
 * parent, which the parent then sees.
 */
#include "zdtm.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIZE (16 * 1024)
#define TAIL 100
#define MSIZE (8 * 1024)

static char want[SIZE + TAIL], buf[SIZE + TAIL], mwant[MSIZE];

static int same_file(const struct stat *a, const char *other, const char *what)
{
	struct stat b;

	if (stat(other, &b)) {
		zdtm_fail("stat %s: %m", other);
		return 0;
	}
	if (a->st_dev != b.st_dev || a->st_ino != b.st_ino) {
		zdtm_fail("%s is %lu:%lu, %s is %lu:%lu: not the same file", what,
			  (unsigned long)a->st_dev, (unsigned long)a->st_ino, other,
			  (unsigned long)b.st_dev, (unsigned long)b.st_ino);
		return 0;
	}
	return 1;
}

static void map_same(void *addr, size_t len, const char *other, const char *what)
{
	char path[128];
	struct stat st;

	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)addr,
		 (unsigned long)addr + len);
	if (stat(path, &st))
		zdtm_fail("stat %s: %m", path);
	else
		same_file(&st, other, what);
}

/* What the other name holds at [off, off + n). */
static int read_other(const char *other, char *to, size_t n, off_t off)
{
	int f = open(other, O_RDONLY);
	ssize_t r = f < 0 ? -1 : pread(f, to, n, off);

	if (f >= 0)
		close(f);
	return r == (ssize_t)n;
}

int main(int argc, char **argv)
{
	char cwd[PATH_MAX], expect[PATH_MAX + 32], shown[PATH_MAX + 32], path[64], got[8];
	int fd, dupfd, ro, mfd, flags, roflags;
	pid_t c1;
	struct stat st;
	char *map, *mmap_only;
	ssize_t n;

	zdtm_init(argc, argv);
	if (!getcwd(cwd, sizeof(cwd)))
		zdtm_die("getcwd: %m");
	fd = open("linked.dat", O_RDWR | O_CREAT | O_TRUNC, 0640);
	zdtm_fill(want, SIZE, 71);
	if (fd < 0 || write(fd, want, SIZE) != SIZE)
		zdtm_die("create linked.dat: %m");
	if (link("linked.dat", "other.dat") || unlink("linked.dat"))
		zdtm_die("link/unlink: %m");
	zdtm_fill(want + SIZE, TAIL, 72);
	if (write(fd, want + SIZE, TAIL) != TAIL || lseek(fd, 5000, SEEK_SET) != 5000)
		zdtm_die("write after unlink: %m");
	dupfd = dup(fd);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ro = open(path, O_RDONLY);
	if (dupfd < 0 || ro < 0 || lseek(ro, 77, SEEK_SET) != 77)
		zdtm_die("dup/reopen: %m");
	map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		zdtm_die("mmap linked.dat: %m");

	mfd = open("mapped.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
	zdtm_fill(mwant, MSIZE, 73);
	if (mfd < 0 || write(mfd, mwant, MSIZE) != MSIZE)
		zdtm_die("create mapped.dat: %m");
	mmap_only = mmap(NULL, MSIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (mmap_only == MAP_FAILED || link("mapped.dat", "mapped-other.dat") || close(mfd) ||
	    unlink("mapped.dat"))
		zdtm_die("mapped.dat: %m");
	flags = fcntl(fd, F_GETFL);
	roflags = fcntl(ro, F_GETFL);
	snprintf(expect, sizeof(expect), "%s/linked.dat (deleted)", cwd);

	zdtm_tree_sync_init();
	c1 = fork();
	if (c1 < 0)
		zdtm_die("fork: %m");
	if (c1 == 0) {
		zdtm_set_role("c1");
		zdtm_tree_ready("1", 1);
		zdtm_wait_check();
		if (fstat(fd, &st) == 0)
			same_file(&st, "other.dat", "the inherited fd");
		map_same(map, SIZE, "other.dat", "the inherited mapping");
		map_same(mmap_only, MSIZE, "mapped-other.dat", "the inherited mapping without fd");
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, shown, sizeof(shown) - 1);
		shown[n < 0 ? 0 : n] = 0;
		if (strcmp(shown, expect))
			zdtm_fail("%s -> \"%s\", expected \"%s\"", path, shown, expect);
		if (memcmp(map, want, SIZE) || memcmp(mmap_only, mwant, MSIZE))
			zdtm_fail("the inherited mappings differ");
		if (lseek(fd, 0, SEEK_CUR) != 5000 || lseek(fd, 7000, SEEK_SET) != 7000)
			zdtm_fail("the inherited offset is %lld, expected 5000",
				  (long long)lseek(fd, 0, SEEK_CUR));
		zdtm_child_exit();
	}
	if (zdtm_tree_wait(NULL, 0) != 1)
		zdtm_die("c1 did not get ready");

	zdtm_ready();
	zdtm_wait_check();

	/* The very file, at every fd and mapping. */
	if (fstat(fd, &st))
		zdtm_die("fstat: %m");
	same_file(&st, "other.dat", "the fd");
	if (st.st_nlink < 1 || st.st_size != SIZE + TAIL)
		zdtm_fail("nlink %ld size %lld, expected >= 1 and %d", (long)st.st_nlink,
			  (long long)st.st_size, SIZE + TAIL);
	if (fstat(dupfd, &st) == 0)
		same_file(&st, "other.dat", "the dup'ed fd");
	if (fstat(ro, &st) == 0)
		same_file(&st, "other.dat", "the second description");
	map_same(map, SIZE, "other.dat", "the mapping");
	map_same(mmap_only, MSIZE, "mapped-other.dat", "the mapping without fd");
	if (access("linked.dat", F_OK) == 0)
		zdtm_fail("linked.dat exists (the restore left the deleted name)");

	/* Names, offsets, flags. */
	for (int i = 0; i < 2; i++) {
		int f = i ? ro : fd;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", f);
		n = readlink(path, shown, sizeof(shown) - 1);
		shown[n < 0 ? 0 : n] = 0;
		if (strcmp(shown, expect))
			zdtm_fail("%s -> \"%s\", expected \"%s\"", path, shown, expect);
	}
	if (lseek(fd, 0, SEEK_CUR) != 5000 || lseek(ro, 0, SEEK_CUR) != 77)
		zdtm_fail("offsets %lld and %lld, expected 5000 and 77",
			  (long long)lseek(fd, 0, SEEK_CUR), (long long)lseek(ro, 0, SEEK_CUR));
	if (fcntl(fd, F_GETFL) != flags || fcntl(ro, F_GETFL) != roflags)
		zdtm_fail("F_GETFL %#o %#o, expected %#o %#o", fcntl(fd, F_GETFL),
			  fcntl(ro, F_GETFL), flags, roflags);
	if (lseek(dupfd, 6000, SEEK_SET) != 6000 || lseek(fd, 0, SEEK_CUR) != 6000)
		zdtm_fail("the dup'ed fd does not share the offset");
	if (lseek(ro, 0, SEEK_CUR) != 77)
		zdtm_fail("the second description shares the offset");
	lseek(fd, 5000, SEEK_SET);

	/* Contents. */
	if (pread(fd, buf, SIZE + TAIL, 0) != SIZE + TAIL || memcmp(buf, want, SIZE + TAIL))
		zdtm_fail("the contents differ");
	if (memcmp(map, want, SIZE))
		zdtm_fail("the mapping differs");
	if (memcmp(mmap_only, mwant, MSIZE))
		zdtm_fail("the mapping without fd differs");

	/* Writes reach the other name (and the mapping), then are put back. */
	if (pwrite(fd, "HELLO", 5, 100) != 5)
		zdtm_fail("pwrite: %m");
	if (!read_other("other.dat", got, 5, 100) || memcmp(got, "HELLO", 5))
		zdtm_fail("a write through the fd does not show through other.dat");
	if (memcmp(map + 100, "HELLO", 5))
		zdtm_fail("a write through the fd does not show in the mapping");
	memcpy(map + 200, "WORLD", 5);
	if (!read_other("other.dat", got, 5, 200) || memcmp(got, "WORLD", 5))
		zdtm_fail("a store into the mapping does not show through other.dat");
	memcpy(mmap_only + 300, "AGAIN", 5);
	if (!read_other("mapped-other.dat", got, 5, 300) || memcmp(got, "AGAIN", 5))
		zdtm_fail("a store into the mapping without fd does not show through mapped-other.dat");
	if (pwrite(fd, want + 100, 5, 100) != 5)
		zdtm_fail("put back: %m");
	memcpy(map + 200, want + 200, 5);
	memcpy(mmap_only + 300, mwant + 300, 5);
	if (msync(map, SIZE, MS_SYNC) || msync(mmap_only, MSIZE, MS_SYNC))
		zdtm_fail("msync: %m");

	/* The child has the same descriptions: its move of the offset shows here. */
	zdtm_stop_child(c1, "c1");
	if (lseek(fd, 0, SEEK_CUR) != 7000)
		zdtm_fail("offset %lld after the child moved it to 7000: not one description",
			  (long long)lseek(fd, 0, SEEK_CUR));
	lseek(fd, 5000, SEEK_SET);
	zdtm_pass_or_fail();
}

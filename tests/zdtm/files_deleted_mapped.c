/*
 * files_deleted_mapped: a deleted file that is only mapped (no fd).
 *
 * "mapped.dat" (64 KiB of pattern, mode 0640) is mapped three times: A,
 * MAP_SHARED read-write over the whole file (one page rewritten through
 * it, never msync'ed), B, MAP_SHARED read-only over 16 KiB at offset
 * 16 KiB, and C, MAP_PRIVATE read-write over the whole file with its first
 * page rewritten; then its fd is closed and it is unlinked.  On SIGTERM:
 * the contents of A, B and C; the three are one deleted file (st_nlink 0,
 * one inode through /proc/self/map_files, its mode); a write through A
 * shows in B and in C's untouched pages, not in C's rewritten page.
 */
#include "zdtm.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIZE (64 * 1024)
#define PG 4096

static int map_stat(void *addr, size_t len, struct stat *st)
{
	char path[128];

	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)addr,
		 (unsigned long)addr + len);
	return stat(path, st);
}

int main(int argc, char **argv)
{
	static char want[SIZE], page[PG];
	struct stat sa, sb, sc;
	char *a, *b, *c;
	int fd;

	zdtm_init(argc, argv);
	fd = open("mapped.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
	zdtm_fill(want, SIZE, 61);
	if (fd < 0 || write(fd, want, SIZE) != SIZE || fchmod(fd, 0640))
		zdtm_die("create mapped.dat: %m");
	a = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	b = mmap(NULL, 4 * PG, PROT_READ, MAP_SHARED, fd, 4 * PG);
	c = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (a == MAP_FAILED || b == MAP_FAILED || c == MAP_FAILED)
		zdtm_die("mmap: %m");
	zdtm_fill(want + 5 * PG, PG, 62);
	memcpy(a + 5 * PG, want + 5 * PG, PG);
	zdtm_fill(page, PG, 63);
	memcpy(c, page, PG);
	if (close(fd) || unlink("mapped.dat"))
		zdtm_die("close/unlink: %m");

	zdtm_ready();
	zdtm_wait_check();

	if (memcmp(a, want, SIZE))
		zdtm_fail("the shared mapping differs");
	if (memcmp(b, want + 4 * PG, 4 * PG))
		zdtm_fail("the read-only alias differs");
	if (memcmp(c, page, PG) || memcmp(c + PG, want + PG, SIZE - PG))
		zdtm_fail("the private mapping differs");
	if (map_stat(a, SIZE, &sa) || map_stat(b, 4 * PG, &sb) || map_stat(c, SIZE, &sc))
		zdtm_die("stat map_files: %m");
	if (sa.st_ino != sb.st_ino || sa.st_ino != sc.st_ino || sa.st_dev != sb.st_dev)
		zdtm_fail("the mappings are not one file");
	if (sa.st_nlink != 0)
		zdtm_fail("st_nlink = %ld, expected 0", (long)sa.st_nlink);
	if ((sa.st_mode & 07777) != 0640 || sa.st_size != SIZE)
		zdtm_fail("mode %#o size %lld, expected 0640 %d", sa.st_mode & 07777,
			  (long long)sa.st_size, SIZE);
	memset(a + 6 * PG, 0x5a, PG);
	memset(a, 0x5b, PG);
	if (b[2 * PG] != 0x5a || b[3 * PG - 1] != 0x5a)
		zdtm_fail("a write through the shared mapping does not show in the alias");
	if (c[6 * PG] != 0x5a)
		zdtm_fail("a write through the shared mapping does not show in the private one");
	if (memcmp(c, page, PG))
		zdtm_fail("a write through the shared mapping shows in a rewritten private page");
	zdtm_pass_or_fail();
}

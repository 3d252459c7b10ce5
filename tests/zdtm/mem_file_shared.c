/*
 * mem_file_shared: MAP_SHARED mappings of a regular file.
 *
 * An 8-page file "shared.dat" (created with ftruncate, i.e. a hole) is
 * mapped MAP_SHARED read-write (A) and, pages 2-3 again, MAP_SHARED
 * read-only (B).  Pages 0-5 are written through A (never msync'ed), pages
 * 6-7 are left as holes; the fd is closed, so only the mappings refer to
 * the file.
 *
 * On SIGTERM: perms/offsets/file name of both mappings, the content of A
 * and B, and the file content (pread) must match.  Then the sharing is
 * checked both ways: new data written through A must show up in B at once
 * and in the file after msync; data pwrite()n to the file must show up
 * in A.  The file is then put back as it was at READY (pages 2 and 3
 * rewritten, page 6 a hole again), for a copy restored from the same
 * images (after --leave-running, or a second restore).
 */
#include "zdtm.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NPAGES 8
static size_t psz;
static uint64_t seed[NPAGES];	/* 0 = zero page */
static uint8_t *a, *b, *buf;
static int fd;

static void check_page(const char *what, const uint8_t *p, int pg)
{
	size_t off = seed[pg] ? zdtm_check(p, psz, seed[pg]) : zdtm_check_zero(p, psz);

	if (off != psz)
		zdtm_fail("%s: file page %d differs at offset %zu", what, pg, off);
}

static void check_all(const char *when)
{
	char what[128];

	for (int pg = 0; pg < NPAGES; pg++) {
		snprintf(what, sizeof(what), "A %s", when);
		check_page(what, a + pg * psz, pg);
		if (pg == 2 || pg == 3) {
			snprintf(what, sizeof(what), "B %s", when);
			check_page(what, b + (pg - 2) * psz, pg);
		}
		snprintf(what, sizeof(what), "file %s", when);
		if (pread(fd, buf, psz, pg * psz) != (ssize_t)psz)
			zdtm_fail("%s: short read of page %d", what, pg);
		else
			check_page(what, buf, pg);
	}
}

static void check_vma(const char *what, const void *addr, const char *perms,
		      unsigned long pgoff)
{
	struct zdtm_vma v;
	const char *suffix = "/shared.dat";

	if (zdtm_find_vma(addr, &v)) {
		zdtm_fail("%s: no mapping at %p", what, addr);
		return;
	}
	if (strcmp(v.perms, perms) || v.pgoff != pgoff || v.start != (unsigned long)addr)
		zdtm_fail("%s: %lx-%lx %s pgoff %#lx, expected start %p %s pgoff %#lx",
			  what, v.start, v.end, v.perms, v.pgoff, addr, perms, pgoff);
	if (strlen(v.name) < strlen(suffix) ||
	    strcmp(v.name + strlen(v.name) - strlen(suffix), suffix))
		zdtm_fail("%s: mapped file is \"%s\"", what, v.name);
}

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	psz = sysconf(_SC_PAGESIZE);
	buf = mmap(NULL, psz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	fd = open("shared.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, NPAGES * psz))
		zdtm_die("create shared.dat: %m");
	a = mmap(NULL, NPAGES * psz, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	b = mmap(NULL, 2 * psz, PROT_READ, MAP_SHARED, fd, 2 * psz);
	if (a == MAP_FAILED || b == MAP_FAILED)
		zdtm_die("mmap: %m");
	close(fd);
	for (int pg = 0; pg < 6; pg++) {
		seed[pg] = 10 + pg;
		zdtm_fill(a + pg * psz, psz, seed[pg]);
	}

	zdtm_ready();
	zdtm_wait_check();

	check_vma("A", a, "rw-s", 0);
	check_vma("B", b, "r--s", 2 * psz);
	fd = open("shared.dat", O_RDWR);
	if (fd < 0)
		zdtm_die("reopen shared.dat: %m");
	check_all("after restore");

	/* write through the mapping: visible in B at once, in the file after msync */
	for (int pg = 2; pg < NPAGES; pg += 4) {
		seed[pg] = 20 + pg;
		zdtm_fill(a + pg * psz, psz, seed[pg]);
	}
	check_page("B right after writing A", b, 2);
	if (msync(a, NPAGES * psz, MS_SYNC))
		zdtm_fail("msync: %m");
	/* write to the file: visible in the mapping */
	seed[3] = 33;
	zdtm_fill(buf, psz, seed[3]);
	if (pwrite(fd, buf, psz, 3 * psz) != (ssize_t)psz)
		zdtm_fail("pwrite: %m");
	check_all("after new writes");
	for (int pg = 2; pg < 4; pg++) {
		zdtm_fill(buf, psz, 10 + pg);
		if (pwrite(fd, buf, psz, pg * psz) != (ssize_t)psz)
			zdtm_fail("pwrite (putting the file back): %m");
	}
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 6 * psz, psz))
		zdtm_fail("fallocate (putting the hole back): %m");
	close(fd);
	zdtm_pass_or_fail();
}

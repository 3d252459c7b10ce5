/*
 * mem_file_private: MAP_PRIVATE mappings of a regular file.
 *
 * A 16-page file "private.dat" (page p holds pattern 100+p) is mapped
 * twice: A = whole file, MAP_PRIVATE, PROT_READ|PROT_WRITE; B = pages 4-7
 * (file offset 4 pages), MAP_PRIVATE, PROT_READ.  In A, pages 0,2,4,6 are
 * overwritten (copy-on-write: their content must come back from the
 * image), page 8 gets one byte changed, pages 1,3,5,7,9-11 are only read
 * and pages 12-15 are never touched (those are still the file's pages).
 *
 * On SIGTERM: both mappings' contents, perms, file name and file offset
 * are checked; the file on disk must be unmodified.  Finally the private
 * semantics are checked: after pwrite() to the file, the pages of A that
 * were never written (and B) must show the new file data, while the
 * copied-on-write page must not.  The file is then put back as it was at
 * READY, for a copy restored from the same images (after --leave-running,
 * or a second restore).
 */
#include "zdtm.h"

#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NPAGES 16
static size_t psz;
static const char *FNAME = "private.dat";

static int a_written(int pg) { return pg < 8 && pg % 2 == 0; }

/* expected pattern seed of page pg of A (before the pwrite phase) */
static uint64_t a_seed(int pg) { return a_written(pg) ? 200 + pg : 100 + pg; }

static void check_vma(const char *what, const void *addr, const char *perms,
		      unsigned long pgoff)
{
	struct zdtm_vma v;
	size_t l = strlen(FNAME);

	if (zdtm_find_vma(addr, &v)) {
		zdtm_fail("%s: no mapping at %p", what, addr);
		return;
	}
	if (strcmp(v.perms, perms) || v.pgoff != pgoff || v.start != (unsigned long)addr)
		zdtm_fail("%s: %lx-%lx %s pgoff %#lx, expected start %p %s pgoff %#lx",
			  what, v.start, v.end, v.perms, v.pgoff, addr, perms, pgoff);
	if (strlen(v.name) < l + 1 || strcmp(v.name + strlen(v.name) - l - 1, "/private.dat"))
		zdtm_fail("%s: mapped file is \"%s\"", what, v.name);
}

static void check_page(const char *what, const uint8_t *p, uint64_t seed, int pg)
{
	size_t off = zdtm_check(p, psz, seed);

	if (off != psz)
		zdtm_fail("%s: page %d differs at offset %zu (expected pattern %llu)", what, pg,
			  off, (unsigned long long)seed);
}

int main(int argc, char **argv)
{
	uint8_t *a, *b, *buf;
	volatile uint8_t sink;
	int fd;

	zdtm_init(argc, argv);
	psz = sysconf(_SC_PAGESIZE);
	buf = mmap(NULL, psz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	fd = open(FNAME, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		zdtm_die("open: %m");
	for (int pg = 0; pg < NPAGES; pg++) {
		zdtm_fill(buf, psz, 100 + pg);
		if (pwrite(fd, buf, psz, pg * psz) != (ssize_t)psz)
			zdtm_die("pwrite: %m");
	}
	a = mmap(NULL, NPAGES * psz, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	b = mmap(NULL, 4 * psz, PROT_READ, MAP_PRIVATE, fd, 4 * psz);
	if (a == MAP_FAILED || b == MAP_FAILED)
		zdtm_die("mmap: %m");
	close(fd);

	for (int pg = 0; pg < 12; pg++) {
		if (a_written(pg))
			zdtm_fill(a + pg * psz, psz, 200 + pg);
		else
			sink = a[pg * psz + 7];	/* fault it in read-only */
	}
	a[8 * psz + 123] ^= 0xff;
	sink = b[0];
	(void)sink;

	zdtm_ready();
	zdtm_wait_check();

	check_vma("A", a, "rw-p", 0);
	check_vma("B", b, "r--p", 4 * psz);
	a[8 * psz + 123] ^= 0xff;	/* undo the one-byte change for the check */
	for (int pg = 0; pg < NPAGES; pg++)
		check_page("A", a + pg * psz, a_seed(pg), pg);
	a[8 * psz + 123] ^= 0xff;
	for (int pg = 0; pg < 4; pg++)
		check_page("B", b + pg * psz, 100 + 4 + pg, 4 + pg);

	/* the file itself must not have been modified */
	fd = open(FNAME, O_RDWR);
	if (fd < 0)
		zdtm_die("reopen: %m");
	for (int pg = 0; pg < NPAGES; pg++) {
		if (pread(fd, buf, psz, pg * psz) != (ssize_t)psz)
			zdtm_fail("file: short read of page %d", pg);
		else
			check_page("file on disk", buf, 100 + pg, pg);
	}

	/* private-mapping semantics: unmodified pages still track the file */
	static const int upd[] = { 2, 5, 11, 13 };
	for (int i = 0; i < 4; i++) {
		zdtm_fill(buf, psz, 300 + upd[i]);
		if (pwrite(fd, buf, psz, upd[i] * psz) != (ssize_t)psz)
			zdtm_die("pwrite: %m");
	}
	check_page("A (written page after pwrite to file)", a + 2 * psz, 202, 2);
	check_page("A (read page after pwrite to file)", a + 5 * psz, 305, 5);
	check_page("A (read page after pwrite to file)", a + 11 * psz, 311, 11);
	check_page("A (untouched page after pwrite to file)", a + 13 * psz, 313, 13);
	check_page("B (after pwrite to file)", b + 1 * psz, 305, 5);
	for (int i = 0; i < 4; i++) {
		zdtm_fill(buf, psz, 100 + upd[i]);
		if (pwrite(fd, buf, psz, upd[i] * psz) != (ssize_t)psz)
			zdtm_fail("pwrite (putting the file back): %m");
	}
	close(fd);
	zdtm_pass_or_fail();
}

/*
 * mem_precopy_file_drop: pages of a private file mapping that the process wrote (copy-on-write)
 * and then dropped with MADV_DONTNEED while a --leave-running dump was copying its memory. The
 * process reads the file's data there again, and so must a copy restored from that dump.
 *
 * Why: write tracking (asynchronous userfaultfd write protection) leaves a marker in the page
 * table entry of a protected page of a *file* mapping that is dropped, and the pagemap shows
 * that marker as a swapped page. A dump that took it for a page holding data kept the page's
 * earlier copy, and the restored process read its own old data instead of the file's.
 *
 * Layout: 32 MiB of pattern data mapped first, then the 8-page file mapping placed below it
 * (pre-copy passes go up the address space): the dump's first pass protects the file mapping and then copies the 32 MiB,
 * which leaves the program time to act. Pages 0-7 are written before READY. After READY the
 * program watches its own pagemap: a written page whose entry says "write-protected" (bit 57:
 * the dump has been there) is dropped at once, and `dropped[p]` records it (in memory that is
 * dumped with the rest, so a restored copy knows what it had done).
 *
 * Checked on SIGTERM: a dropped page reads as the file, a page not dropped as written; the 32
 * MiB as filled. A dump that does not write-protect (the frozen variants) drops nothing.
 */
#include "zdtm.h"

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NPAGES 8
#define BIG (32u << 20)
#define PM_UFFD_WP (1ull << 57)

static size_t psz;
static volatile int dropped[NPAGES];

/* Our /proc/self/pagemap, open the whole time (so that every dump sees the same fds). */
static int pagemap_fd;

/* The pagemap entry of our own page at `addr` (0 when it cannot be read). */
static uint64_t pagemap_entry(const void *addr)
{
	uint64_t e = 0;

	if (pread(pagemap_fd, &e, sizeof(e), (off_t)((uintptr_t)addr / psz * sizeof(e))) !=
	    sizeof(e))
		e = 0;
	return e;
}

int main(int argc, char **argv)
{
	uint8_t *big, *a, *buf;
	size_t off;
	int fd;

	zdtm_init(argc, argv);
	psz = sysconf(_SC_PAGESIZE);
	buf = mmap(NULL, psz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	big = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED || big == MAP_FAILED)
		zdtm_die("mmap: %m");
	zdtm_fill(big, BIG, 7);

	fd = open("drop.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		zdtm_die("open: %m");
	for (int pg = 0; pg < NPAGES; pg++) {
		zdtm_fill(buf, psz, 100 + pg);
		if (pwrite(fd, buf, psz, pg * psz) != (ssize_t)psz)
			zdtm_die("pwrite: %m");
	}
	/* Below the data, with a gap (so that the two never merge or touch). */
	a = mmap(big - (NPAGES + 16) * psz, NPAGES * psz, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0);
	if (a == MAP_FAILED)
		zdtm_die("mmap of the file below %p: %m", big);
	close(fd);
	for (int pg = 0; pg < NPAGES; pg++)
		zdtm_fill(a + pg * psz, psz, 200 + pg);
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0)
		zdtm_die("open /proc/self/pagemap: %m");

	zdtm_ready();
	while (!zdtm_stop) {
		for (int pg = 0; pg < NPAGES; pg++) {
			if (dropped[pg] || !(pagemap_entry(a + pg * psz) & PM_UFFD_WP))
				continue;
			if (madvise(a + pg * psz, psz, MADV_DONTNEED))
				zdtm_die("madvise: %m");
			dropped[pg] = 1;
		}
		usleep(100);
	}

	for (int pg = 0; pg < NPAGES; pg++) {
		uint64_t seed = dropped[pg] ? 100 + pg : 200 + pg;

		off = zdtm_check(a + pg * psz, psz, seed);
		if (off != psz)
			zdtm_fail("page %d (%s) differs at offset %zu: expected the %s", pg,
				  dropped[pg] ? "dropped" : "written", off,
				  dropped[pg] ? "file's data" : "data written");
	}
	off = zdtm_check(big, BIG, 7);
	if (off != BIG)
		zdtm_fail("the 32 MiB differ at offset %zu", off);
	zdtm_pass_or_fail();
}

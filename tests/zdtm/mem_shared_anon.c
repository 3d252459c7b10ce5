/*
 * mem_shared_anon: MAP_SHARED|MAP_ANONYMOUS memory.
 *
 * A 4 MiB shared anonymous mapping: pages with number % 5 == 4 are never
 * touched (must read back as zero), page 7 is written and then zeroed,
 * all other pages hold a per-page pattern.  A second 4-page shared
 * anonymous mapping is filled and made read-only.
 *
 * On SIGTERM every byte and the perms ("rw-s" / "r--s") are checked.
 * Then the restored mapping must still really be shared memory: mremap()
 * with old_size 0 (only allowed on shared mappings) creates a second view
 * of the same pages, and writes through either view must be visible in
 * the other.
 */
#include "zdtm.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SIZE (4u << 20)
#define RO_PAGES 4
static size_t psz;

static uint64_t page_seed(int pg) { return 1000 + pg; }
static int page_filled(int pg) { return pg % 5 != 4 && pg != 7; }

static void check_vma(const char *what, const void *addr, size_t len, const char *perms)
{
	struct zdtm_vma v;

	if (zdtm_find_vma(addr, &v))
		zdtm_fail("%s: no mapping at %p", what, addr);
	else if (strcmp(v.perms, perms) || v.start != (unsigned long)addr ||
		 v.end != (unsigned long)addr + len)
		zdtm_fail("%s: %lx-%lx %s, expected %p+%#zx %s", what, v.start, v.end,
			  v.perms, addr, len, perms);
}

int main(int argc, char **argv)
{
	uint8_t *m, *ro, *alias;
	int nbad = 0;

	zdtm_init(argc, argv);
	psz = sysconf(_SC_PAGESIZE);
	m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ro = mmap(NULL, RO_PAGES * psz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED || ro == MAP_FAILED)
		zdtm_die("mmap: %m");
	for (size_t pg = 0; pg < SIZE / psz; pg++) {
		if (pg % 5 == 4)
			continue;
		zdtm_fill(m + pg * psz, psz, page_seed(pg));
	}
	memset(m + 7 * psz, 0, psz);
	zdtm_fill(ro, RO_PAGES * psz, 42);
	if (mprotect(ro, RO_PAGES * psz, PROT_READ))
		zdtm_die("mprotect: %m");

	zdtm_ready();
	zdtm_wait_check();

	check_vma("shared", m, SIZE, "rw-s");
	check_vma("shared read-only", ro, RO_PAGES * psz, "r--s");
	for (size_t pg = 0; pg < SIZE / psz; pg++) {
		const uint8_t *p = m + pg * psz;
		size_t off = page_filled(pg) ? zdtm_check(p, psz, page_seed(pg))
					     : zdtm_check_zero(p, psz);

		if (off != psz && nbad++ < 10)
			zdtm_fail("page %zu differs at offset %zu (expected %s)", pg, off,
				  page_filled(pg) ? "pattern" : "zero");
	}
	if (zdtm_check(ro, RO_PAGES * psz, 42) != RO_PAGES * psz)
		zdtm_fail("read-only shared mapping: content differs");

	/* shared semantics: a second view of the same pages */
	alias = mremap(m, 0, SIZE, MREMAP_MAYMOVE);
	if (alias == MAP_FAILED) {
		zdtm_fail("mremap(old_size=0) failed: %m (not a shared mapping any more?)");
	} else {
		if (zdtm_check(alias + psz, psz, page_seed(1)) != psz)
			zdtm_fail("second view: content differs");
		zdtm_fill(alias + 4 * psz, psz, 4242);
		if (zdtm_check(m + 4 * psz, psz, 4242) != psz)
			zdtm_fail("write through the second view not visible in the mapping");
		zdtm_fill(m + 9 * psz, psz, 4343);
		if (zdtm_check(alias + 9 * psz, psz, 4343) != psz)
			zdtm_fail("write through the mapping not visible in the second view");
	}
	zdtm_pass_or_fail();
}

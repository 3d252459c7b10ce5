/*
 * mem_anon: private anonymous memory.
 *
 * argv[1] = size of the main mapping in MiB (default 64).  Its pages are,
 * by page number modulo 8:
 *   0-4  filled with a per-page pattern
 *   5    never touched (must read back as zero)
 *   6    written, then explicitly zero-filled with memset
 *   7    written, then discarded with MADV_DONTNEED (reads back as zero)
 * Plus smaller mappings with other protections:
 *   ro   - written, then mprotect(PROT_READ)          -> "r--p"
 *   none - written, then mprotect(PROT_NONE)          -> "---p"; at check
 *          time it is mprotect'ed back to PROT_READ and its content checked
 *   gd   - MAP_GROWSDOWN, written                     -> "rw-p" + VmFlags gd
 * Every byte is verified on SIGTERM, and the protections (and addresses)
 * are verified against /proc/self/maps.
 */
#include "zdtm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SMALL_PAGES 8
static size_t psz;

struct area {
	const char *name;
	uint8_t *addr;
	size_t len;
	const char *perms;
};

static uint64_t page_seed(const struct area *a, size_t pg)
{
	return zdtm_hash(a->name, strlen(a->name), pg);
}

static void *map(size_t len, int flags)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
	if (p == MAP_FAILED)
		zdtm_die("mmap(%zu): %m", len);
	return p;
}

/* what the main mapping's page pg should contain: 1 pattern, 0 zero */
static int main_page_filled(size_t pg)
{
	return pg % 8 < 5;
}

static void check_page(const struct area *a, size_t pg, int filled, int *nbad)
{
	const uint8_t *p = a->addr + pg * psz;
	size_t off = filled ? zdtm_check(p, psz, page_seed(a, pg)) : zdtm_check_zero(p, psz);

	if (off != psz && (*nbad)++ < 10)
		zdtm_fail("%s: page %zu (%p) differs at offset %zu: %#x (expected %s)",
			  a->name, pg, (void *)p, off, p[off], filled ? "pattern" : "zero");
}

static void check_perms(const struct area *a)
{
	struct zdtm_vma v;

	if (zdtm_find_vma(a->addr, &v)) {
		zdtm_fail("%s: no mapping at %p in /proc/self/maps", a->name, a->addr);
		return;
	}
	if (strcmp(v.perms, a->perms))
		zdtm_fail("%s: perms %s, expected %s", a->name, v.perms, a->perms);
	if (v.end < (unsigned long)a->addr + a->len)
		zdtm_fail("%s: mapping %lx-%lx does not cover %p+%zu", a->name,
			  v.start, v.end, a->addr, a->len);
}

/* does the smaps VmFlags line of the mapping at addr contain "gd"? */
static int has_gd_flag(void *addr, char *flags, size_t size)
{
	char padded[300];

	flags[0] = 0;
	if (zdtm_vma_flags(addr, flags, size))
		return 0;
	snprintf(padded, sizeof(padded), " %s ", flags);
	return strstr(padded, " gd ") != NULL;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 64;
	struct area big = { "big", NULL, mib << 20, "rw-p" };
	struct area ro = { "ro", NULL, 0, "r--p" };
	struct area none = { "none", NULL, 0, "---p" };
	struct area gd = { "growsdown", NULL, 0, "rw-p" };
	struct area *small[] = { &ro, &none, &gd };
	char flags[256];
	int nbad = 0;

	zdtm_init(argc, argv);
	psz = sysconf(_SC_PAGESIZE);
	if (mib == 0)
		zdtm_die("bad size");

	big.addr = map(big.len, 0);
	for (size_t pg = 0; pg < big.len / psz; pg++) {
		uint8_t *p = big.addr + pg * psz;

		switch (pg % 8) {
		case 5:
			break;			/* untouched */
		case 6:
			zdtm_fill(p, psz, 1);
			memset(p, 0, psz);	/* written, then zeroed */
			break;
		case 7:
			zdtm_fill(p, psz, 2);	/* written, then discarded */
			break;
		default:
			zdtm_fill(p, psz, page_seed(&big, pg));
		}
	}
	for (size_t pg = 7; pg < big.len / psz; pg += 8)
		if (madvise(big.addr + pg * psz, psz, MADV_DONTNEED))
			zdtm_die("madvise: %m");

	for (int i = 0; i < 3; i++) {
		struct area *a = small[i];

		a->len = SMALL_PAGES * psz;
		a->addr = map(a->len, a == &gd ? MAP_GROWSDOWN : 0);
		for (size_t pg = 0; pg < SMALL_PAGES; pg++)
			zdtm_fill(a->addr + pg * psz, psz, page_seed(a, pg));
	}
	if (mprotect(ro.addr, ro.len, PROT_READ) || mprotect(none.addr, none.len, PROT_NONE))
		zdtm_die("mprotect: %m");
	if (!has_gd_flag(gd.addr, flags, sizeof(flags)))
		zdtm_die("growsdown mapping has no gd flag (VmFlags: %s)", flags);

	zdtm_ready();
	zdtm_wait_check();

	/* protections first: the check below changes "none" */
	check_perms(&big);
	for (int i = 0; i < 3; i++)
		check_perms(small[i]);
	if (!has_gd_flag(gd.addr, flags, sizeof(flags)))
		zdtm_fail("growsdown: VmFlags \"%s\" lack gd", flags);

	for (size_t pg = 0; pg < big.len / psz; pg++)
		check_page(&big, pg, main_page_filled(pg), &nbad);

	if (mprotect(none.addr, none.len, PROT_READ))
		zdtm_fail("mprotect(none, PROT_READ): %m");
	for (int i = 0; i < 3; i++)
		for (size_t pg = 0; pg < SMALL_PAGES; pg++)
			check_page(small[i], pg, 1, &nbad);
	if (nbad > 10)
		zdtm_fail("%d bad pages in total", nbad);

	zdtm_pass_or_fail();
}

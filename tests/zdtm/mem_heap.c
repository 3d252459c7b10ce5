/*
 * mem_heap: the malloc heap (brk area and mmap'ed chunks) and the program
 * break.
 *
 * Before READY: thousands of small blocks (served from the brk heap) and
 * some large ones (served by mmap) are malloc'ed and filled with
 * per-block patterns, every third block is freed again, sbrk(0) is saved.
 * On SIGTERM: sbrk(0) must be unchanged, every live block intact; then the
 * allocator must still work on the restored heap (its metadata lives in
 * the restored memory): the freed sizes are allocated again, some blocks
 * are realloc'ed, everything is rechecked and freed; finally the heap is
 * grown with sbrk(1 MiB) and the new memory used.
 */
#include "zdtm.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NSMALL 3000
#define NLARGE 16
#define NBLK (NSMALL + NLARGE)

static struct blk {
	uint8_t *p;
	size_t size;
	uint64_t seed;
} blk[NBLK];

static void check_blk(int i, const char *when)
{
	size_t off = zdtm_check(blk[i].p, blk[i].size, blk[i].seed);

	if (off != blk[i].size)
		zdtm_fail("%s: block %d (%p, %zu bytes) differs at offset %zu", when, i,
			  blk[i].p, blk[i].size, off);
}

static void alloc_blk(int i, size_t size, uint64_t seed)
{
	blk[i].p = malloc(size);
	if (!blk[i].p)
		zdtm_die("malloc(%zu) failed", size);
	blk[i].size = size;
	blk[i].seed = seed;
	zdtm_fill(blk[i].p, size, seed);
}

int main(int argc, char **argv)
{
	uint8_t *brk_start, *brk_before, *brk_after, *ext;
	int nbrk = 0, nmmap = 0;
	const size_t MB = 1 << 20;

	zdtm_init(argc, argv);
	brk_start = sbrk(0);

	for (int i = 0; i < NBLK; i++) {
		uint64_t r = zdtm_mix64(i);
		size_t size = i < NSMALL ? 1 + r % 2048 : 200 * 1024 + r % (4 * MB);

		alloc_blk(i, size, i);
	}
	for (int i = 0; i < NBLK; i += 3) {
		free(blk[i].p);
		blk[i].p = NULL;
	}
	brk_before = sbrk(0);
	for (int i = 0; i < NBLK; i++) {
		if (!blk[i].p)
			continue;
		if (blk[i].p >= brk_start && blk[i].p < brk_before)
			nbrk++;
		else
			nmmap++;
	}
	if (nbrk < NSMALL / 2 || nmmap < NLARGE / 2)
		zdtm_die("unexpected heap layout: %d blocks in brk heap, %d elsewhere", nbrk, nmmap);

	zdtm_ready();
	zdtm_wait_check();

	brk_after = sbrk(0);
	if (brk_after != brk_before)
		zdtm_fail("program break %p, expected %p", brk_after, brk_before);

	for (int i = 0; i < NBLK; i++)
		if (blk[i].p)
			check_blk(i, "after restore");

	/* exercise the allocator on the restored heap */
	for (int i = 0; i < NBLK; i++) {
		if (!blk[i].p) {
			alloc_blk(i, blk[i].size, i + 1000000);
		} else if (i % 7 == 0) {
			size_t old = blk[i].size;
			uint8_t *p = realloc(blk[i].p, old * 2 + 100);

			if (!p)
				zdtm_die("realloc failed");
			blk[i].p = p;
			if (zdtm_check(p, old, blk[i].seed) != old)
				zdtm_fail("block %d: content lost by realloc", i);
			blk[i].size = old * 2 + 100;
			blk[i].seed = i + 2000000;
			zdtm_fill(p, blk[i].size, blk[i].seed);
		}
	}
	for (int i = 0; i < NBLK; i++)
		check_blk(i, "after new allocations");
	for (int i = 0; i < NBLK; i++)
		free(blk[i].p);
	malloc_trim(0);

	/* grow the heap by hand */
	brk_before = sbrk(0);
	ext = sbrk(MB);
	if (ext == (void *)-1) {
		zdtm_fail("sbrk(1 MiB): %m");
	} else {
		if (ext != brk_before)
			zdtm_fail("sbrk returned %p, expected %p", ext, brk_before);
		if ((uint8_t *)sbrk(0) != ext + MB)
			zdtm_fail("break not moved by 1 MiB");
		zdtm_fill(ext, MB, 77);
		if (zdtm_check(ext, MB, 77) != MB)
			zdtm_fail("memory from sbrk is not usable");
	}
	/* malloc must cope with the foreign sbrk */
	for (int i = 0; i < 100; i++)
		alloc_blk(i, 1000 + i * 100, i + 3000000);
	for (int i = 0; i < 100; i++) {
		check_blk(i, "after sbrk");
		free(blk[i].p);
	}
	zdtm_pass_or_fail();
}

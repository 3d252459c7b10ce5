/*
 * mem_cow_tree: memory shared copy-on-write between a parent and its forked
 * children comes back shared (issue 10).
 *
 *   root: 64 MiB of private anonymous memory, filled (pattern 1)
 *   ├─ child 0: rewrites 4 pages, then forks
 *   │  └─ grandchild: rewrites 2 pages of its own
 *   ├─ child 1: rewrites 4 pages
 *   └─ child 2: rewrites 4 pages
 * Once every child is set up, the root rewrites 4 pages of its own (the
 * children keep the old ones).
 *
 * On SIGTERM the root checks, reading PFNs from /proc/PID/pagemap (the test
 * runs as root), that every page nobody rewrote is the same page frame in
 * the root and in each child and grandchild, and that the pages child 0
 * rewrote before forking are the same frames in child 0 and the grandchild:
 * after a restore that gives each process its own copy, none is. Then every
 * process checks the contents of its 64 MiB.
 */
#include "zdtm.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define MB (1024UL * 1024)
#define SIZE (64 * MB)
#define NPAGES (SIZE / PAGE)
#define NCHILD 3

static uint8_t *mem;

/* The pages each writer rewrites: 4 (or 2) pages at a distinct offset. */
struct writes {
	size_t first;	/* page index */
	size_t n;
	uint64_t seed;
};

static const struct writes child_w[NCHILD] = {
	{ 4 * MB / PAGE, 4, 100 },
	{ 8 * MB / PAGE + 7, 4, 101 },
	{ 12 * MB / PAGE + 300, 4, 102 },
};
static const struct writes grand_w = { 20 * MB / PAGE + 5, 2, 200 };
static const struct writes root_w = { 30 * MB / PAGE + 1, 4, 300 };

static int in(const struct writes *w, size_t pg)
{
	return pg >= w->first && pg < w->first + w->n;
}

static void apply(const struct writes *w)
{
	for (size_t i = 0; i < w->n; i++)
		zdtm_fill(mem + (w->first + i) * PAGE, PAGE, w->seed + i);
}

/* Whether page pg still holds its part of the root's fill (pattern 1 over
 * the 64 MiB). */
static int fill_page_ok(size_t pg)
{
	const uint64_t *w = (const uint64_t *)(mem + pg * PAGE);

	for (size_t i = 0; i < PAGE / 8; i++)
		if (w[i] != zdtm_pattern_word(1, pg * PAGE / 8 + i))
			return 0;
	return 1;
}

/* Checks the 64 MiB of `who`: the pages of `mine` (up to 3 sets) hold their
 * patterns, every other page pattern 1. */
static void check_contents(const char *who, const struct writes **mine, int n)
{
	for (size_t pg = 0; pg < NPAGES; pg++) {
		uint64_t seed = 0;
		int found = 0;

		for (int k = 0; k < n && !found; k++)
			if (in(mine[k], pg)) {
				seed = mine[k]->seed + (pg - mine[k]->first);
				found = 1;
			}
		if (found) {
			if (zdtm_check(mem + pg * PAGE, PAGE, seed) != PAGE) {
				zdtm_fail("%s: page %zu (rewritten) differs", who, pg);
				return;
			}
		} else if (!fill_page_ok(pg)) {
			zdtm_fail("%s: page %zu differs from the parent's fill", who, pg);
			return;
		}
	}
}

/* The PFNs of the 64 MiB in process pid (0 for a page not present). */
static int read_pfns(pid_t pid, uint64_t *pfn)
{
	char path[64];
	int fd;
	ssize_t r;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY);
	if (fd < 0) {
		zdtm_fail("open %s: %m", path);
		return -1;
	}
	r = pread(fd, pfn, NPAGES * 8, (off_t)((uintptr_t)mem / PAGE * 8));
	close(fd);
	if (r != (ssize_t)(NPAGES * 8)) {
		zdtm_fail("read %s: %zd bytes (%m)", path, r);
		return -1;
	}
	for (size_t i = 0; i < NPAGES; i++)
		pfn[i] = (pfn[i] >> 63) ? (pfn[i] & ((1ULL << 55) - 1)) : 0;
	return 0;
}

/* Pages of `a` and `b` that must be the same frame (`want`), and how many are. */
static void expect_shared(const char *what, const uint64_t *a, const uint64_t *b,
			  int (*shared)(size_t pg))
{
	size_t want = 0, same = 0, first_bad = NPAGES;

	for (size_t pg = 0; pg < NPAGES; pg++) {
		if (!shared(pg))
			continue;
		want++;
		if (a[pg] && a[pg] == b[pg])
			same++;
		else if (first_bad == NPAGES)
			first_bad = pg;
	}
	if (same != want)
		zdtm_fail("%s: %zu of %zu pages are shared (first not shared: page %zu)", what,
			  same, want, first_bad);
}

static int child_idx;

static int shared_with_root(size_t pg)
{
	return !in(&root_w, pg) && !in(&child_w[child_idx], pg);
}

static int gc_shared_with_root(size_t pg)
{
	return !in(&root_w, pg) && !in(&child_w[0], pg) && !in(&grand_w, pg);
}

static int gc_shared_with_child0(size_t pg)
{
	return !in(&grand_w, pg);
}

struct ready_msg {
	int32_t who;	/* 0..NCHILD-1: a child; 9: the grandchild */
	int32_t pid;
};

static void grandchild(void)
{
	const struct writes *mine[] = { &child_w[0], &grand_w };
	struct ready_msg m = { 9, getpid() };

	zdtm_set_role("grandchild");
	apply(&grand_w);
	zdtm_tree_ready(&m, sizeof(m));
	zdtm_wait_check();
	check_contents("grandchild", mine, 2);
	zdtm_child_exit();
}

static void child(int i)
{
	const struct writes *mine[] = { &child_w[i] };
	struct ready_msg m = { i, getpid() };
	pid_t gc = -1;
	char role[16];

	snprintf(role, sizeof(role), "child %d", i);
	zdtm_set_role(role);
	apply(&child_w[i]);
	if (i == 0) {
		gc = fork();
		if (gc < 0)
			zdtm_die("fork: %m");
		if (gc == 0)
			grandchild();
	}
	zdtm_tree_ready(&m, sizeof(m));
	zdtm_wait_check();
	check_contents(role, mine, 1);
	if (gc > 0)
		zdtm_stop_child(gc, "grandchild");
	zdtm_child_exit();
}

int main(int argc, char **argv)
{
	struct ready_msg msgs[NCHILD + 1];
	pid_t kids[NCHILD], gc = -1;
	const struct writes *mine[] = { &root_w };
	uint64_t *root_pfn, *pfn, *c0_pfn;

	zdtm_init(argc, argv);
	mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	root_pfn = malloc(NPAGES * 8);
	pfn = malloc(NPAGES * 8);
	c0_pfn = malloc(NPAGES * 8);
	if (mem == MAP_FAILED || !root_pfn || !pfn || !c0_pfn)
		zdtm_die("mmap/malloc: %m");
	zdtm_fill(mem, SIZE, 1);

	zdtm_tree_sync_init();
	for (int i = 0; i < NCHILD; i++) {
		kids[i] = fork();
		if (kids[i] < 0)
			zdtm_die("fork: %m");
		if (kids[i] == 0)
			child(i);
	}
	if (zdtm_tree_wait(msgs, sizeof(msgs)) != sizeof(msgs))
		zdtm_die("not every process got ready");
	for (int i = 0; i < NCHILD + 1; i++)
		if (msgs[i].who == 9)
			gc = msgs[i].pid;
	if (gc <= 0)
		zdtm_die("no grandchild");
	apply(&root_w);
	zdtm_ready();

	zdtm_wait_check();

	/* Sharing first: nothing has been read or written since. */
	if (!read_pfns(getpid(), root_pfn)) {
		for (int i = 0; i < NCHILD; i++) {
			char what[64];

			if (read_pfns(kids[i], pfn))
				continue;
			if (i == 0)
				memcpy(c0_pfn, pfn, NPAGES * 8);
			child_idx = i;
			snprintf(what, sizeof(what), "root and child %d", i);
			expect_shared(what, root_pfn, pfn, shared_with_root);
		}
		if (!read_pfns(gc, pfn)) {
			expect_shared("root and grandchild", root_pfn, pfn, gc_shared_with_root);
			expect_shared("child 0 and grandchild", c0_pfn, pfn, gc_shared_with_child0);
		}
	}
	check_contents("root", mine, 1);
	for (int i = 0; i < NCHILD; i++) {
		char who[16];

		snprintf(who, sizeof(who), "child %d", i);
		zdtm_stop_child(kids[i], who);
	}
	zdtm_pass_or_fail();
}

/*
 * tree_mem_mixed: a memory-heavy tree whose memory keeps changing, with
 * data of every kind a dump meets (registered with --compress variants too).
 *
 *   root: main thread + 2 writer threads
 *   └─ child (one thread)
 *
 * Memory of the root, set up before READY:
 *   - heap (12 MiB, private anonymous): 4 MiB of text records (compress
 *     well), 4 MiB of random-looking pattern (do not compress), 4 MiB of
 *     text with every 4th page left zero;
 *   - shm (4 MiB, MAP_SHARED|MAP_ANONYMOUS, shared with the child): the root
 *     writes text into the first half, the child a pattern into [2M,3M);
 *     [3M,4M) stays zero;
 *   - a private mapping of a 1 MiB file (data.bin, in the cwd, holding a
 *     pattern): pages 0..63 overwritten with text (copy-on-write), the
 *     others stay as in the file;
 *   - each writer thread owns 2 MiB (private anonymous) that it rewrites
 *     page by page in rounds, all the time (also while the tree is dumped):
 *     page p of round r holds text made of (thread, r, p). It records the
 *     round and how many pages of it are done; on SIGTERM it stops at a
 *     page boundary and checks that the pages before that position hold
 *     round r and those after it round r - 1 (round 0: the initial fill).
 * The child gets a copy of the heap (copy-on-write) and rewrites its first
 * MiB with its own text.
 *
 * On SIGTERM the root checks its memory, the writers check theirs, the root
 * then stops the child, which checks its view (heap copy, shm, the file
 * mapping as inherited).
 */
#include "zdtm.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define KB 1024UL
#define MB (1024 * KB)
#define PAGE 4096UL

#define HEAP_SZ (12 * MB)
#define SHM_SZ (4 * MB)
#define FILE_SZ (1 * MB)
#define WR_SZ (2 * MB)
#define WR_PAGES (WR_SZ / PAGE)
#define NWRITERS 2

static uint8_t *heap, *shm, *fmap;

/* Page `page` of text stream `seed`: lines of words and numbers, like a
 * heap of small records (compresses several times). */
static void text_page(uint8_t *p, uint64_t seed, uint64_t page)
{
	size_t o = 0;
	uint64_t i = 0;

	while (o < PAGE) {
		char line[96];
		uint64_t k = zdtm_pattern_word(seed, page * 64 + i++);
		int n = snprintf(line, sizeof(line), "{\"id\": %lu, \"name\": \"user-%lu\", \"score\": %lu}\n",
				 (unsigned long)(page * 1000 + i), (unsigned long)(k % 5000),
				 (unsigned long)(k % 100));
		size_t m = (size_t)n < PAGE - o ? (size_t)n : PAGE - o;

		memcpy(p + o, line, m);
		o += m;
	}
}

static void text_fill(uint8_t *m, size_t len, uint64_t seed)
{
	for (size_t pg = 0; pg < len / PAGE; pg++)
		text_page(m + pg * PAGE, seed, pg);
}

/* Offset of the first page of m that is not text stream seed, or len. */
static size_t text_check(const uint8_t *m, size_t len, uint64_t seed)
{
	uint8_t want[PAGE];

	for (size_t pg = 0; pg < len / PAGE; pg++) {
		text_page(want, seed, pg);
		if (memcmp(m + pg * PAGE, want, PAGE))
			return pg * PAGE;
	}
	return len;
}

/* The heap: text, pattern, then text with every 4th page zero. */
static void heap_fill(uint8_t *h)
{
	text_fill(h, 4 * MB, 1);
	zdtm_fill(h + 4 * MB, 4 * MB, 2);
	for (size_t pg = 0; pg < 4 * MB / PAGE; pg++)
		if (pg % 4 != 3)
			text_page(h + 8 * MB + pg * PAGE, 3, pg);
}

static void heap_expect(const char *who, const uint8_t *h, int child)
{
	size_t d, first = 0;

	/* The child rewrote the first MiB of its copy. */
	if (child) {
		if ((d = text_check(h, 1 * MB, 9)) != 1 * MB)
			zdtm_fail("%s: heap (its own text) differs at %zu", who, d);
		first = 1 * MB / PAGE;
	}
	for (size_t pg = first; pg < 4 * MB / PAGE; pg++) {
		uint8_t want[PAGE];

		text_page(want, 1, pg);
		if (memcmp(h + pg * PAGE, want, PAGE)) {
			zdtm_fail("%s: heap text page %zu differs", who, pg);
			break;
		}
	}
	if ((d = zdtm_check(h + 4 * MB, 4 * MB, 2)) != 4 * MB)
		zdtm_fail("%s: heap pattern differs at %zu", who, d);
	for (size_t pg = 0; pg < 4 * MB / PAGE; pg++) {
		const uint8_t *p = h + 8 * MB + pg * PAGE;
		uint8_t want[PAGE];

		if (pg % 4 == 3) {
			if (zdtm_check_zero(p, PAGE) != PAGE) {
				zdtm_fail("%s: heap zero page %zu is not zero", who, pg);
				break;
			}
			continue;
		}
		text_page(want, 3, pg);
		if (memcmp(p, want, PAGE)) {
			zdtm_fail("%s: heap text page %zu (of the third part) differs", who, pg);
			break;
		}
	}
}

static void shm_expect(const char *who)
{
	size_t d;

	if ((d = text_check(shm, 2 * MB, 4)) != 2 * MB)
		zdtm_fail("%s: shm text differs at %zu", who, d);
	if ((d = zdtm_check(shm + 2 * MB, 1 * MB, 5)) != 1 * MB)
		zdtm_fail("%s: shm [2M,3M) (written by the child) differs at %zu", who, d);
	if ((d = zdtm_check_zero(shm + 3 * MB, 1 * MB)) != 1 * MB)
		zdtm_fail("%s: shm [3M,4M) is not zero at %zu", who, d);
}

static void fmap_expect(const char *who)
{
	size_t d;

	if ((d = text_check(fmap, 64 * PAGE, 6)) != 64 * PAGE)
		zdtm_fail("%s: file mapping (written pages) differs at %zu", who, d);
	/* The pages not written are the file's: pattern 7 from offset 0. */
	for (size_t o = 64 * PAGE; o < FILE_SZ; o += PAGE) {
		for (size_t i = 0; i < PAGE; i++) {
			if (fmap[o + i] != zdtm_pattern_byte(7, o + i)) {
				zdtm_fail("%s: file mapping (clean pages) differs at %zu", who, o + i);
				return;
			}
		}
	}
}

struct writer {
	pthread_t th;
	uint8_t *mem;
	volatile uint64_t round;	/* the round being written (from 1) */
	volatile uint64_t pos;		/* pages of it done */
	volatile int started;
	int bad;
	char err[160];
};

static struct writer writers[NWRITERS];
static volatile int quit;

static uint64_t writer_seed(struct writer *w, uint64_t round)
{
	return 1000 + (uint64_t)(w - writers) * 100000 + round;
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct timespec pause = { 0, 2000000 };
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	w->started = 1;
	while (!quit) {
		text_page(w->mem + w->pos * PAGE, writer_seed(w, w->round), w->pos);
		if (++w->pos == WR_PAGES) {
			w->pos = 0;
			w->round++;
		}
		if (w->pos % 32 == 0)
			nanosleep(&pause, NULL);
	}
	/* Pages before pos: this round; from pos on: the round before. */
	for (uint64_t pg = 0; pg < WR_PAGES; pg++) {
		uint64_t r = pg < w->pos ? w->round : w->round - 1;
		uint8_t want[PAGE];

		text_page(want, writer_seed(w, r), pg);
		if (memcmp(w->mem + pg * PAGE, want, PAGE)) {
			w->bad = 1;
			snprintf(w->err, sizeof(w->err),
				 "writer %d: page %lu is not of round %lu (now round %lu, page %lu)",
				 (int)(w - writers), (unsigned long)pg, (unsigned long)r,
				 (unsigned long)w->round, (unsigned long)w->pos);
			break;
		}
	}
	return NULL;
}

static void child(void)
{
	zdtm_set_role("child");
	zdtm_fill(shm + 2 * MB, 1 * MB, 5);
	text_fill(heap, 1 * MB, 9);
	zdtm_tree_ready(NULL, 0);

	zdtm_wait_check();

	heap_expect("child", heap, 1);
	shm_expect("child");
	fmap_expect("child");
	zdtm_child_exit();
}

int main(int argc, char **argv)
{
	pid_t pid;
	int fd;

	zdtm_init(argc, argv);
	heap = mmap(NULL, HEAP_SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	shm = mmap(NULL, SHM_SZ, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (heap == MAP_FAILED || shm == MAP_FAILED)
		zdtm_die("mmap: %m");
	heap_fill(heap);
	text_fill(shm, 2 * MB, 4);

	fd = open("data.bin", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		zdtm_die("open data.bin: %m");
	{
		uint8_t *buf = malloc(FILE_SZ);

		if (!buf)
			zdtm_die("malloc");
		zdtm_fill(buf, FILE_SZ, 7);
		if (write(fd, buf, FILE_SZ) != (ssize_t)FILE_SZ)
			zdtm_die("write data.bin: %m");
		free(buf);
	}
	fmap = mmap(NULL, FILE_SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (fmap == MAP_FAILED)
		zdtm_die("mmap data.bin: %m");
	close(fd);
	text_fill(fmap, 64 * PAGE, 6);

	zdtm_tree_sync_init();
	pid = fork();
	if (pid < 0)
		zdtm_die("fork: %m");
	if (pid == 0)
		child();
	if (zdtm_tree_wait(NULL, 0) != 1)
		zdtm_die("the child did not get ready");

	for (int i = 0; i < NWRITERS; i++) {
		struct writer *w = &writers[i];

		w->mem = mmap(NULL, WR_SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (w->mem == MAP_FAILED)
			zdtm_die("mmap: %m");
		for (uint64_t pg = 0; pg < WR_PAGES; pg++)
			text_page(w->mem + pg * PAGE, writer_seed(w, 0), pg);
		w->round = 1;
		if (pthread_create(&w->th, NULL, writer_main, w))
			zdtm_die("pthread_create");
	}
	for (int i = 0; i < NWRITERS; i++)
		while (!writers[i].started)
			usleep(1000);
	zdtm_ready();

	zdtm_wait_check();

	quit = 1;
	for (int i = 0; i < NWRITERS; i++) {
		pthread_join(writers[i].th, NULL);
		if (writers[i].bad)
			zdtm_fail("%s", writers[i].err);
		if (writers[i].round < 2 && writers[i].pos == 0)
			zdtm_fail("writer %d made no progress", i);
	}
	heap_expect("root", heap, 0);
	shm_expect("root");
	fmap_expect("root");
	zdtm_stop_child(pid, "child");
	zdtm_pass_or_fail();
}

/*
 * mem_precopy: memory that keeps changing while it is dumped (the pre-copy of a
 * leave-running dump copies it while the process runs, then only what was
 * written since, frozen).
 *
 * Every region is "swept": a writer stores generation g in the first word of
 * page i, in order, and then publishes cursor = g * npages + i + 1 (the cursor
 * lives in the process's memory too).  Whenever the process is stopped, page i
 * holds the last generation the cursor says it got, except the page being
 * written, which may already hold the next one.  The cursors live in shared
 * memory, which a dump copies while the process is frozen (it cannot track
 * writes there): a private page copied before it was written, and not copied
 * again, shows an older generation than its cursor says.  The writers also
 * check each page before they write it (it must hold the generation before the
 * one they write, and a page of the drop region must be empty before it is
 * filled and full before it is dropped), so that a restored copy that starts
 * writing at once reports what it found wrong instead of overwriting it.
 *
 *   A   8 MiB private anonymous, thread 1, as fast as it can (never settles);
 *   B   8 MiB private anonymous, thread 2, with pauses (settles);
 *   F   4 MiB private mapping of a file of zeros, thread 2;
 *   D  16 parts of 4 pages that thread 2 fills with a number k, then drops
 *      (MADV_DONTNEED: zeros), half of them full at any time, each with a state
 *      word saying which step it is in;
 *   S   4 MiB shared anonymous, swept by a child process;
 *   C   4 MiB private anonymous of the child, swept by it.
 * On SIGTERM the threads stop and every region is checked; the child is told
 * to stop and check C (it reports in S), then S is checked.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096UL

struct sweep {
	volatile uint64_t *base;
	uint64_t npages;
	volatile uint64_t cursor; /* next (generation * npages + page) to write */
};

/* Shared memory (also with the child): every cursor and control word. */
struct shared_ctl {
	volatile int stop;
	volatile int child_result; /* 0 running, 1 pass, 2 fail */
	struct sweep s, a, b, f, c;
	/* Per part of D: 1 filling k, 2 filled, 3 dropping, 4 dropped. */
	volatile uint64_t d_state[16], d_k[16];
	char why[200];
	volatile int bad; /* a writer found a page that was not as it left it */
	char bad_why[200];
};

#define A (ctl->a)
#define B (ctl->b)
#define F (ctl->f)
static volatile uint64_t *D;
static volatile int stop_threads;
static struct shared_ctl *ctl;

static void *map(size_t len, int flags, int fd)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (p == MAP_FAILED)
		zdtm_die("mmap %zu: %m", len);
	return p;
}

static void init_sweep(struct sweep *s, void *base, size_t len)
{
	s->base = base;
	s->npages = len / PG;
	s->cursor = s->npages; /* generation 1, page 0 */
}

static void report_bad(const char *what, uint64_t page, uint64_t found, uint64_t expected)
{
	if (__atomic_exchange_n(&ctl->bad, 1, __ATOMIC_SEQ_CST))
		return;
	snprintf(ctl->bad_why, sizeof(ctl->bad_why),
		 "a writer found %s page %llu holding %llu, not %llu", what,
		 (unsigned long long)page, (unsigned long long)found,
		 (unsigned long long)expected);
}

/* Writes one page of the sweep (checking that it holds the generation before)
 * and publishes the cursor. */
static void sweep_step(struct sweep *s)
{
	uint64_t c = s->cursor;
	uint64_t g = c / s->npages, i = c % s->npages;
	uint64_t old = s->base[i * (PG / 8)];

	if (old != g - 1)
		report_bad(s == &ctl->a ? "A" : s == &ctl->b ? "B" : s == &ctl->f ? "F" :
			   s == &ctl->s ? "S" : "C", i, old, g - 1);
	__atomic_store_n(&s->base[i * (PG / 8)], g, __ATOMIC_SEQ_CST);
	__atomic_store_n(&s->cursor, c + 1, __ATOMIC_SEQ_CST);
}

/* Checks a sweep against its cursor; returns 0 or writes why into why. */
static int check_sweep(const char *name, struct sweep *s, char *why, size_t whylen)
{
	uint64_t c = s->cursor, n = s->npages;

	for (uint64_t i = 0; i < n; i++) {
		/* The last write of page i the cursor covers: index g*n+i < c. */
		uint64_t g = c > i + n ? (c - 1 - i) / n : 0;
		uint64_t v = s->base[i * (PG / 8)];
		int writing = i == c % n;

		if (v != g && !(writing && v == g + 1)) {
			snprintf(why, whylen, "%s page %llu holds generation %llu, cursor %llu says %llu",
				 name, (unsigned long long)i, (unsigned long long)v,
				 (unsigned long long)c, (unsigned long long)g);
			return -1;
		}
	}
	return 0;
}

static void pause_us(long us)
{
	struct timespec ts = { 0, us * 1000 };
	nanosleep(&ts, NULL);
}

static void *fast_writer(void *arg)
{
	(void)arg;
	while (!stop_threads)
		sweep_step(&A);
	return NULL;
}

/* Part j of D: its 4 pages; page p of it holds its number in its first word. */
#define DPAGE(j, p) D[((j) * 4 + (p)) * (PG / 8)]

static void *slow_writer(void *arg)
{
	uint64_t k = 0;

	(void)arg;
	for (uint64_t t = 0; !stop_threads; t++) {
		for (int j = 0; j < 32 && !stop_threads; j++) {
			sweep_step(&B);
			sweep_step(&F);
		}
		/* Fill part j (dropped 8 steps ago), drop part j + 8 (filled 8 steps ago). */
		int j = t % 16, o = (t + 8) % 16;
		k++;
		ctl->d_k[j] = k;
		__atomic_store_n(&ctl->d_state[j], 1, __ATOMIC_SEQ_CST);
		for (int p = 0; p < 4; p++) {
			if (DPAGE(j, p) != 0)
				report_bad("dropped", j * 4 + p, DPAGE(j, p), 0);
			__atomic_store_n(&DPAGE(j, p), k, __ATOMIC_SEQ_CST);
		}
		__atomic_store_n(&ctl->d_state[j], 2, __ATOMIC_SEQ_CST);
		if (ctl->d_state[o] == 2) {
			for (int p = 0; p < 4; p++)
				if (DPAGE(o, p) != ctl->d_k[o])
					report_bad("filled", o * 4 + p, DPAGE(o, p), ctl->d_k[o]);
			__atomic_store_n(&ctl->d_state[o], 3, __ATOMIC_SEQ_CST);
			if (madvise((void *)&DPAGE(o, 0), 4 * PG, MADV_DONTNEED))
				zdtm_die("madvise: %m");
			__atomic_store_n(&ctl->d_state[o], 4, __ATOMIC_SEQ_CST);
		}
		pause_us(300);
	}
	return NULL;
}

static void check_drop_region(void)
{
	for (int j = 0; j < 16; j++) {
		uint64_t st = ctl->d_state[j], k = ctl->d_k[j];

		for (int p = 0; p < 4; p++) {
			uint64_t v = DPAGE(j, p);
			int ok = (st == 2 && v == k) || (st == 4 && v == 0) ||
				 ((st == 1 || st == 3) && (v == 0 || v == k)) || (st == 0 && v == 0);
			if (!ok) {
				zdtm_fail("drop region part %d page %d holds %llu in state %llu (k %llu)",
					  j, p, (unsigned long long)v, (unsigned long long)st,
					  (unsigned long long)k);
				return;
			}
		}
	}
}

static void child(void)
{
	init_sweep(&ctl->c, map(4 << 20, MAP_PRIVATE | MAP_ANONYMOUS, -1), 4 << 20);
	while (!ctl->stop) {
		for (int j = 0; j < 64; j++) {
			sweep_step(&ctl->s);
			sweep_step(&ctl->c);
		}
		pause_us(100);
	}
	ctl->child_result = check_sweep("C", &ctl->c, ctl->why, sizeof(ctl->why)) ? 2 : 1;
	_exit(0);
}

int main(int argc, char **argv)
{
	pthread_t t1, t2;
	char why[256];
	pid_t pid;
	int fd;

	zdtm_init(argc, argv);
	ctl = map(sizeof(*ctl) + (4 << 20) + PG, MAP_SHARED | MAP_ANONYMOUS, -1);
	init_sweep(&ctl->s, (char *)ctl + PG, 4 << 20);
	init_sweep(&A, map(8 << 20, MAP_PRIVATE | MAP_ANONYMOUS, -1), 8 << 20);
	init_sweep(&B, map(8 << 20, MAP_PRIVATE | MAP_ANONYMOUS, -1), 8 << 20);
	D = map(64 * PG, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	fd = open("zeros", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || ftruncate(fd, 4 << 20))
		zdtm_die("zeros: %m");
	init_sweep(&F, map(4 << 20, MAP_PRIVATE, fd), 4 << 20);
	close(fd);

	pid = fork();
	if (pid < 0)
		zdtm_die("fork: %m");
	if (pid == 0)
		child();
	if (pthread_create(&t1, NULL, fast_writer, NULL) || pthread_create(&t2, NULL, slow_writer, NULL))
		zdtm_die("pthread_create");

	zdtm_ready();
	zdtm_wait_check();

	stop_threads = 1;
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	if (check_sweep("A", &A, why, sizeof(why)))
		zdtm_fail("%s", why);
	if (check_sweep("B", &B, why, sizeof(why)))
		zdtm_fail("%s", why);
	if (check_sweep("F", &F, why, sizeof(why)))
		zdtm_fail("%s", why);
	check_drop_region();
	if (ctl->bad)
		zdtm_fail("%s", ctl->bad_why);
	if (A.cursor < 2 * A.npages)
		zdtm_fail("the fast writer never finished a sweep (cursor %llu)",
			  (unsigned long long)A.cursor);

	ctl->stop = 1;
	for (int i = 0; i < 400 && !ctl->child_result; i++)
		pause_us(5000);
	if (ctl->child_result == 0)
		zdtm_fail("the child did not report");
	else if (ctl->child_result == 2)
		zdtm_fail("child: %s", ctl->why);
	if (check_sweep("S", &ctl->s, why, sizeof(why)))
		zdtm_fail("%s", why);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	zdtm_pass_or_fail();
}

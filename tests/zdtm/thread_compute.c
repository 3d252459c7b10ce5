/*
 * thread_compute: four threads computing in registers, FPU state, their
 * own heap memory, their stacks and their __thread variables.
 *
 * Every worker thread loads its own patterns into xmm0-15 and nine GPRs,
 * sets its own MXCSR (rounding mode, FTZ/DAZ) and x87 control word
 * (rounding, precision) - these are per-thread state - and spins in an asm
 * loop: each iteration increments a counter (rax), adds r13 to r12, r15 to
 * r14, xmm1 to xmm0 (paddq), 1.0 to the low double of xmm2 (addsd) and
 * stores counter ^ seed into slot counter % 1024 of its own malloc'ed
 * array.  After n iterations every register and every slot is known in
 * closed form, so a register lost, swapped with another thread's or
 * restored into the wrong thread shows.  Each thread also keeps a
 * patterned buffer on its stack and patterned __thread variables (.tdata
 * and .tbss), and remembers its gettid() and pthread_self().
 *
 * The main thread waits for SIGTERM (the workers block it).  Then it
 * checks that /proc/self/task holds exactly the main thread and the four
 * workers' tids and that every worker still makes progress (within 2 s
 * in all), sets the stop flag and joins the workers; each worker has
 * checked its own state (registers, MXCSR, x87 control word, memory,
 * stack, TLS addresses and values, tid) before returning.
 */
#include "zdtm.h"

#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 4
#define NSLOTS 1024
#define NERR 8

/* per-thread state; the asm block addresses it through %rsi */
struct tstate {
	uint8_t xin[16][16];
	uint8_t xout[16][16];
	uint64_t gin[9];	/* rbx r8 r9 r10 r11 r12 r13 r14 r15 */
	uint64_t gout[11];	/* the same, then rdx (mem) and rax (count) */
	uint64_t *mem;
	volatile int *stop;
	uint32_t mxcsr_new, mxcsr_out, mxcsr_saved;
	uint16_t fcw_new, fcw_out, fcw_saved;

	int idx;
	uint64_t seed;
	pid_t tid;
	pthread_t self;
	void *tl_data_addr, *tl_bss_addr;
	volatile int started;
	int nerr;
	char err[NERR][160];
} __attribute__((aligned(64)));

static struct tstate ts[NTHREADS];
static pthread_t threads[NTHREADS];
static volatile int stop_threads;

static __thread uint64_t tl_data[4] = { 0x1111111111111111ULL, 0x2222222222222222ULL,
					0x3333333333333333ULL, 0x4444444444444444ULL };
static __thread uint64_t tl_bss[64];

#define TFAIL(t, ...)                                                          \
	do {                                                                   \
		if ((t)->nerr < NERR)                                          \
			snprintf((t)->err[(t)->nerr], sizeof((t)->err[0]), __VA_ARGS__); \
		(t)->nerr++;                                                   \
	} while (0)

#define R16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) \
	X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define XLOAD(i) "movdqu %c[xin]+" #i "*16(%%rsi), %%xmm" #i "\n\t"
#define XSTORE(i) "movdqu %%xmm" #i ", %c[xout]+" #i "*16(%%rsi)\n\t"

static void spin(struct tstate *t)
{
	asm volatile(
		"stmxcsr %c[mxs](%%rsi)\n\t"
		"ldmxcsr %c[mxn](%%rsi)\n\t"
		"fnstcw %c[fcs](%%rsi)\n\t"
		"fldcw %c[fcn](%%rsi)\n\t"
		R16(XLOAD)
		"mov %c[gin]+0(%%rsi), %%rbx\n\t"
		"mov %c[gin]+8(%%rsi), %%r8\n\t"
		"mov %c[gin]+16(%%rsi), %%r9\n\t"
		"mov %c[gin]+24(%%rsi), %%r10\n\t"
		"mov %c[gin]+32(%%rsi), %%r11\n\t"
		"mov %c[gin]+40(%%rsi), %%r12\n\t"
		"mov %c[gin]+48(%%rsi), %%r13\n\t"
		"mov %c[gin]+56(%%rsi), %%r14\n\t"
		"mov %c[gin]+64(%%rsi), %%r15\n\t"
		"mov %c[mem](%%rsi), %%rdx\n\t"
		"xor %%eax, %%eax\n\t"
		"1:\n\t"
		"inc %%rax\n\t"
		"add %%r13, %%r12\n\t"
		"add %%r15, %%r14\n\t"
		"paddq %%xmm1, %%xmm0\n\t"
		"addsd %%xmm3, %%xmm2\n\t"
		"mov %%rax, %%rdi\n\t"
		"xor %%rbx, %%rdi\n\t"
		"mov %%eax, %%ecx\n\t"
		"and $1023, %%ecx\n\t"
		"mov %%rdi, (%%rdx,%%rcx,8)\n\t"
		"mov %c[stop](%%rsi), %%rcx\n\t"
		"cmpl $0, (%%rcx)\n\t"
		"je 1b\n\t"
		R16(XSTORE)
		"mov %%rbx, %c[gout]+0(%%rsi)\n\t"
		"mov %%r8, %c[gout]+8(%%rsi)\n\t"
		"mov %%r9, %c[gout]+16(%%rsi)\n\t"
		"mov %%r10, %c[gout]+24(%%rsi)\n\t"
		"mov %%r11, %c[gout]+32(%%rsi)\n\t"
		"mov %%r12, %c[gout]+40(%%rsi)\n\t"
		"mov %%r13, %c[gout]+48(%%rsi)\n\t"
		"mov %%r14, %c[gout]+56(%%rsi)\n\t"
		"mov %%r15, %c[gout]+64(%%rsi)\n\t"
		"mov %%rdx, %c[gout]+72(%%rsi)\n\t"
		"mov %%rax, %c[gout]+80(%%rsi)\n\t"
		"stmxcsr %c[mxo](%%rsi)\n\t"
		"fnstcw %c[fco](%%rsi)\n\t"
		"ldmxcsr %c[mxs](%%rsi)\n\t"
		"fldcw %c[fcs](%%rsi)\n\t"
		:
		: "S"(t),
		  [xin] "i"(offsetof(struct tstate, xin)),
		  [xout] "i"(offsetof(struct tstate, xout)),
		  [gin] "i"(offsetof(struct tstate, gin)),
		  [gout] "i"(offsetof(struct tstate, gout)),
		  [mem] "i"(offsetof(struct tstate, mem)),
		  [stop] "i"(offsetof(struct tstate, stop)),
		  [mxn] "i"(offsetof(struct tstate, mxcsr_new)),
		  [mxo] "i"(offsetof(struct tstate, mxcsr_out)),
		  [mxs] "i"(offsetof(struct tstate, mxcsr_saved)),
		  [fcn] "i"(offsetof(struct tstate, fcw_new)),
		  [fco] "i"(offsetof(struct tstate, fcw_out)),
		  [fcs] "i"(offsetof(struct tstate, fcw_saved))
		: "rax", "rbx", "rcx", "rdx", "rdi", "r8", "r9", "r10", "r11", "r12",
		  "r13", "r14", "r15", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
		  "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
		  "xmm14", "xmm15", "memory", "cc");
}

static void setup_state(struct tstate *t, int k)
{
	t->idx = k;
	t->seed = zdtm_mix64(0x7c0de + k);
	zdtm_fill(t->xin, sizeof(t->xin), t->seed);
	/* xmm2 low: a double counting up from 1e6 * (k + 1); xmm3 low: 1.0 */
	{
		double x0 = 1e6 * (k + 1), one = 1.0;
		memcpy(t->xin[2], &x0, 8);
		memcpy(t->xin[3], &one, 8);
	}
	zdtm_fill(t->gin, sizeof(t->gin), t->seed + 1);
	t->mem = malloc(NSLOTS * sizeof(uint64_t));
	if (!t->mem)
		zdtm_die("malloc: %m");
	for (int j = 0; j < NSLOTS; j++)
		t->mem[j] = t->gin[0];	/* "counter 0" */
	t->stop = &stop_threads;
	/* per-thread MXCSR: rounding mode k, FTZ for odd k, DAZ for k >= 2 */
	t->mxcsr_new = 0x1f80 | (k << 13) | ((k & 1) ? 0x8000 : 0) | ((k & 2) ? 0x40 : 0);
	/* per-thread x87 control word: rounding k, single or double precision */
	t->fcw_new = 0x007f | (k << 10) | ((k & 1) ? 0x000 : 0x200);
}

static void check_regs(struct tstate *t)
{
	uint64_t c = t->gout[10];
	uint64_t exp[9];
	double x0, want;

	memcpy(exp, t->gin, sizeof(exp));
	exp[5] = t->gin[5] + c * t->gin[6];	/* r12 += r13 */
	exp[7] = t->gin[7] + c * t->gin[8];	/* r14 += r15 */
	for (int i = 0; i < 9; i++) {
		static const char *const rn[9] = { "rbx", "r8", "r9", "r10", "r11",
						   "r12", "r13", "r14", "r15" };
		if (t->gout[i] != exp[i])
			TFAIL(t, "%s is %#" PRIx64 ", expected %#" PRIx64 " (n %" PRIu64 ")",
			      rn[i], t->gout[i], exp[i], c);
	}
	if (t->gout[9] != (uint64_t)t->mem)
		TFAIL(t, "rdx is %#" PRIx64 ", expected %p", t->gout[9], (void *)t->mem);
	for (int r = 0; r < 16; r++) {
		uint8_t want_x[16];

		memcpy(want_x, t->xin[r], 16);
		if (r == 0) {
			for (int l = 0; l < 2; l++) {
				uint64_t a, b;
				memcpy(&a, t->xin[0] + 8 * l, 8);
				memcpy(&b, t->xin[1] + 8 * l, 8);
				a += c * b;
				memcpy(want_x + 8 * l, &a, 8);
			}
		} else if (r == 2) {
			memcpy(&x0, t->xin[2], 8);
			want = x0 + (double)c;
			memcpy(want_x, &want, 8);
		}
		if (memcmp(want_x, t->xout[r], 16)) {
			uint64_t g[2], w[2];

			memcpy(g, t->xout[r], 16);
			memcpy(w, want_x, 16);
			TFAIL(t, "xmm%d is %016" PRIx64 "%016" PRIx64 ", expected %016" PRIx64
			      "%016" PRIx64 " (n %" PRIu64 ")", r, g[1], g[0], w[1], w[0], c);
		}
	}
	if (t->mxcsr_out != t->mxcsr_new)
		TFAIL(t, "MXCSR %#x, expected %#x", t->mxcsr_out, t->mxcsr_new);
	if (t->fcw_out != t->fcw_new)
		TFAIL(t, "x87 control word %#x, expected %#x", t->fcw_out, t->fcw_new);
	if (c < 2 * NSLOTS) {
		TFAIL(t, "only %" PRIu64 " iterations", c);
		return;
	}
	for (uint64_t j = 0; j < NSLOTS; j++) {
		uint64_t last = c - ((c - j) & (NSLOTS - 1));

		if (t->mem[j] != (last ^ t->gin[0])) {
			TFAIL(t, "mem slot %" PRIu64 " is %#" PRIx64 ", expected %#" PRIx64,
			      j, t->mem[j], last ^ t->gin[0]);
			break;
		}
	}
}

static void *worker(void *arg)
{
	struct tstate *t = arg;
	uint8_t stackbuf[8192];
	size_t off;

	t->tid = gettid();
	t->self = pthread_self();
	zdtm_fill(stackbuf, sizeof(stackbuf), t->seed + 3);
	for (int i = 0; i < 4; i++)
		tl_data[i] ^= t->seed + i;
	zdtm_fill(tl_bss, sizeof(tl_bss), t->seed + 4);
	t->tl_data_addr = tl_data;
	t->tl_bss_addr = tl_bss;
	t->started = 1;

	spin(t);

	check_regs(t);
	if ((off = zdtm_check(stackbuf, sizeof(stackbuf), t->seed + 3)) != sizeof(stackbuf))
		TFAIL(t, "stack buffer differs at byte %zu", off);
	if (t->tl_data_addr != (void *)tl_data || t->tl_bss_addr != (void *)tl_bss)
		TFAIL(t, "__thread variables moved: %p %p, were %p %p", (void *)tl_data,
		      (void *)tl_bss, t->tl_data_addr, t->tl_bss_addr);
	for (int i = 0; i < 4; i++) {
		static const uint64_t init[4] = { 0x1111111111111111ULL, 0x2222222222222222ULL,
						  0x3333333333333333ULL, 0x4444444444444444ULL };
		if (tl_data[i] != (init[i] ^ (t->seed + i)))
			TFAIL(t, "tl_data[%d] is %#" PRIx64, i, tl_data[i]);
	}
	if ((off = zdtm_check(tl_bss, sizeof(tl_bss), t->seed + 4)) != sizeof(tl_bss))
		TFAIL(t, "tl_bss differs at byte %zu", off);
	if (gettid() != t->tid)
		TFAIL(t, "gettid() %d, was %d", (int)gettid(), (int)t->tid);
	if (!pthread_equal(pthread_self(), t->self))
		TFAIL(t, "pthread_self() changed");
	return NULL;
}

/* the highest counter value a worker has stored so far */
static uint64_t progress(struct tstate *t)
{
	uint64_t m = 0;

	for (int j = 0; j < NSLOTS; j++) {
		uint64_t v = __atomic_load_n(&t->mem[j], __ATOMIC_RELAXED) ^ t->gin[0];
		if (v > m)
			m = v;
	}
	return m;
}

static void check_tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *de;
	int seen[NTHREADS] = { 0 }, main_seen = 0;

	if (!d) {
		zdtm_fail("opendir(/proc/self/task): %m");
		return;
	}
	while ((de = readdir(d))) {
		int tid = atoi(de->d_name), known = 0;

		if (de->d_name[0] == '.')
			continue;
		if (tid == getpid()) {
			main_seen = known = 1;
		}
		for (int k = 0; k < NTHREADS; k++)
			if (tid == ts[k].tid) {
				seen[k] = known = 1;
			}
		if (!known)
			zdtm_fail("unexpected thread %d in /proc/self/task", tid);
	}
	closedir(d);
	if (!main_seen)
		zdtm_fail("main thread %d missing from /proc/self/task", getpid());
	for (int k = 0; k < NTHREADS; k++)
		if (!seen[k])
			zdtm_fail("thread %d (tid %d) missing from /proc/self/task", k, (int)ts[k].tid);
}

int main(int argc, char **argv)
{
	sigset_t block, old;
	uint64_t p0[NTHREADS];
	void *tl_main = tl_data;
	pid_t main_tid = gettid();
	struct timespec ms20 = { 0, 20000000 };

	zdtm_init(argc, argv);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &block, &old);	/* the workers inherit it */
	for (int k = 0; k < NTHREADS; k++) {
		setup_state(&ts[k], k);
		if (pthread_create(&threads[k], NULL, worker, &ts[k]))
			zdtm_die("pthread_create failed");
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	for (int k = 0; k < NTHREADS; k++)
		while (!ts[k].started || progress(&ts[k]) < 2 * NSLOTS)
			nanosleep(&ms20, NULL);
	for (int k = 0; k < NTHREADS; k++)
		for (int j = 0; j < k; j++)
			if (ts[k].tl_data_addr == ts[j].tl_data_addr || ts[k].tid == ts[j].tid)
				zdtm_die("threads %d and %d share TLS or tid", j, k);
	zdtm_ready();

	zdtm_wait_check();

	if (gettid() != main_tid || getpid() != main_tid)
		zdtm_fail("main thread: gettid() %d getpid() %d, was %d", (int)gettid(),
			  (int)getpid(), (int)main_tid);
	if ((void *)tl_data != tl_main)
		zdtm_fail("main thread's __thread variable moved");
	check_tasks();
	for (int k = 0; k < NTHREADS; k++)
		p0[k] = progress(&ts[k]);
	/*
	 * Four spinning workers may wait for a CPU for a while on a busy
	 * machine (40 ms were not always enough): together they get up to
	 * 2 s to show progress.
	 */
	for (int k = 0, tries = 0; k < NTHREADS; k++) {
		while (progress(&ts[k]) <= p0[k] && tries++ < 100)
			nanosleep(&ms20, NULL);
		if (progress(&ts[k]) <= p0[k])
			zdtm_fail("thread %d (tid %d) makes no progress (counter %" PRIu64 ")", k,
				  (int)ts[k].tid, p0[k]);
	}
	stop_threads = 1;
	for (int k = 0; k < NTHREADS; k++) {
		pthread_join(threads[k], NULL);
		for (int e = 0; e < ts[k].nerr && e < NERR; e++)
			zdtm_fail("thread %d (tid %d): %s", k, (int)ts[k].tid, ts[k].err[e]);
		if (ts[k].nerr > NERR)
			zdtm_fail("thread %d: %d errors in total", k, ts[k].nerr);
	}
	zdtm_pass_or_fail();
}

/* A process with known memory for the lazy restore tests (crates/cli/tests/lazy.rs).
 *
 * lazy_memory DIR MIB [dontneed|fork]
 *
 * Maps MIB MiB of private anonymous memory and fills it with a pattern of non-zero words
 * (every 16th 64 KiB block stays zero: holes of the image), plus 1 MiB made read-only, forks a
 * child (which keeps its copy; the parent then writes its own, so that nothing is shared
 * copy-on-write), starts a thread that keeps reading the memory, and writes
 * DIR/ready. On each SIGUSR1 (sent after the restore), each process checks every byte of its
 * memory and writes DIR/result.<pid>: "ok" or what differs. With "dontneed", the parent first drops
 * 8 MiB in the middle with MADV_DONTNEED (right after the restore, as soon as it runs: it polls
 * a flag the signal sets) while a second thread keeps reading them, checks that they read as
 * zeros, then writes the pattern again.
 * With "fork", the parent first forks a new child (after the restore, while pages are still
 * missing), which checks its copy of the memory, writes DIR/result.<its pid> and exits. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define BLOCK (64 * 1024)
#define RO_LEN (1 << 20)

static volatile sig_atomic_t go;
static uint64_t *mem;
static uint64_t *ro;
static size_t len;
static const char *dir;

static void on_usr1(int sig) { (void)sig; go = 1; }

static uint64_t want(size_t i, uint64_t salt) {
	if ((i * 8 / BLOCK) % 16 == 5)
		return 0;
	uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull ^ salt;
	x ^= x >> 29;
	return x | 1;
}

static void fill(uint64_t *p, size_t bytes, uint64_t salt) {
	for (size_t i = 0; i < bytes / 8; i++)
		p[i] = want(i, salt);
}

static int check(const uint64_t *p, size_t from, size_t bytes, uint64_t salt, char *why,
		 size_t n) {
	for (size_t i = from / 8; i < bytes / 8; i++)
		if (p[i] != want(i, salt)) {
			snprintf(why, n, "word %zu (byte %#zx) is %#llx, want %#llx", i, i * 8,
				 (unsigned long long)p[i], (unsigned long long)want(i, salt));
			return -1;
		}
	return 0;
}

static void *reader(void *arg) {
	(void)arg;
	volatile uint64_t sum = 0;
	for (;;)
		for (size_t i = 0; i < len / 8; i += 512)
			sum += mem[i];
	return NULL;
}

/* With "dontneed": the range dropped (the server pushes from the lowest address: this one is
 * still missing when the restored process drops it), which a second thread keeps reading, so
 * that its faults there wait when the drop happens. */
#define DROP (8 << 20)
#define DROP_AT (len / 2)

static void *drop_reader(void *arg) {
	(void)arg;
	volatile uint64_t sum = 0;
	for (;;)
		for (size_t i = 0; i < DROP / 8; i += 512)
			sum += mem[DROP_AT / 8 + i];
	return NULL;
}

static void result(const char *text) {
	char path[4096];
	snprintf(path, sizeof path, "%s/result.%d", dir, getpid());
	FILE *f = fopen(path, "w");
	if (!f)
		exit(3);
	fprintf(f, "%s\n", text);
	fclose(f);
}

static int forking;

static void check_once(int dontneed) {
	while (!go)
		usleep(200);
	go = 0;
	char why[256] = "ok";
	if (forking) {
		forking = 0;
		pid_t p = fork();
		if (p < 0) {
			result("fork failed");
			exit(1);
		}
		if (p == 0) {
			if (check(mem, 0, len, 1, why, sizeof why) == 0)
				check(ro, 0, RO_LEN, 2, why, sizeof why);
			result(why);
			_exit(0);
		}
	}
	if (dontneed) {
		uint64_t *p = mem + DROP_AT / 8;
		if (madvise(p, DROP, MADV_DONTNEED)) {
			result("madvise failed");
			exit(1);
		}
		for (size_t i = 0; i < DROP / 8; i++)
			if (p[i]) {
				snprintf(why, sizeof why, "dropped word %zu is %#llx, not zero",
					 DROP_AT / 8 + i, (unsigned long long)p[i]);
				result(why);
				exit(1);
			}
		for (size_t i = 0; i < DROP / 8; i++)
			p[i] = want(DROP_AT / 8 + i, 1);
	}
	if (check(mem, 0, len, 1, why, sizeof why) == 0)
		check(ro, 0, RO_LEN, 2, why, sizeof why);
	result(why);
}

/* Checks on every SIGUSR1, dropping memory first the first time with "dontneed". */
static void serve_checks(int dontneed) {
	check_once(dontneed);
	for (;;)
		check_once(0);
}

int main(int argc, char **argv) {
	if (argc < 3)
		return 2;
	dir = argv[1];
	len = (size_t)atol(argv[2]) << 20;
	int dontneed = argc > 3 && strcmp(argv[3], "dontneed") == 0;
	int fork_after = argc > 3 && strcmp(argv[3], "fork") == 0;
	signal(SIGUSR1, on_usr1);
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro = mmap(NULL, RO_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || ro == MAP_FAILED)
		return 2;
	fill(mem, len, 1);
	fill(ro, RO_LEN, 2);
	if (mprotect(ro, RO_LEN, PROT_READ))
		return 2;
	pid_t child = fork();
	if (child < 0)
		return 2;
	if (child == 0) {
		serve_checks(0);
	}
	/* The parent's own copy of everything (same contents): memory still shared
	 * copy-on-write with the child would be filled before the fork even by a lazy
	 * restore (stasis_engine::pages::cow), and these tests are about lazy pages. */
	fill(mem, len, 1);
	if (mprotect(ro, RO_LEN, PROT_READ | PROT_WRITE))
		return 2;
	fill(ro, RO_LEN, 2);
	if (mprotect(ro, RO_LEN, PROT_READ))
		return 2;
	pthread_t t;
	if (pthread_create(&t, NULL, reader, NULL))
		return 2;
	if (dontneed && pthread_create(&t, NULL, drop_reader, NULL))
		return 2;
	char path[4096];
	forking = fork_after;
	snprintf(path, sizeof path, "%s/ready", dir);
	FILE *f = fopen(path, "w");
	if (!f)
		return 2;
	fprintf(f, "%d\n", child);
	fclose(f);
	serve_checks(dontneed);
}

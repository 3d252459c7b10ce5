/*
 * selfdumper: checkpoints itself with libstasis (the self-dump tests of
 * crates/daemon/tests/selfdump.rs).
 *
 *   selfdumper IMAGES_DIR [--mib N] [--kill] [--children] [--go FILE]
 *              [--child | --child-exec PROGRAM ARG]
 *
 * With --child it first forks a child that waits (and dies with its parent); with
 * --child-exec the child runs PROGRAM ARG instead. Either way it prints "CHILD <pid>" once
 * the child runs. --children asks for the dump of the caller and its children.
 *
 * Fills N MiB (default 64) with a pattern, prints "READY <pid>", waits for FILE to exist
 * when --go is given, calls stasis_dump_self() on IMAGES_DIR and prints what it returned:
 *
 *   "DUMPED <pid>"        0: the original, after its images were written
 *   "RESTORED <pid>"      1: a process restored from the images
 *   "ERROR <code> <msg>"  a negative code (the process runs on)
 *
 * then checks the whole pattern ("PASS" or "FAIL ...") and waits: SIGUSR1 makes it print
 * "PONG <n>" (proof that it still runs and answers), SIGTERM makes it print "EXIT" and exit
 * with status 0. Every line is one write(2) to stdout (a log file opened O_APPEND), so the
 * original and its restored copies append to one log without interleaving inside a line.
 *
 * It keeps no descriptor open other than stdin/stdout/stderr, the images directory and,
 * during the call, its connection to stasisd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "stasis.h"

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t pings;

static void on_term(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void on_usr1(int sig)
{
	(void)sig;
	pings++;
}

/* One line, one write(2). */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t off = 0;
	while (off < n) {
		ssize_t w = write(1, buf + off, (size_t)(n - off));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		off += w;
	}
}

static uint64_t pattern(uint64_t i)
{
	uint64_t x = i * 0x9E3779B97F4A7C15ull + 0x5354415349530001ull;
	x ^= x >> 29;
	x *= 0xBF58476D1CE4E5B9ull;
	x ^= x >> 32;
	return x;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
	const char *images = NULL, *go = NULL, *child_prog = NULL, *child_arg = NULL;
	int child = 0;
	unsigned long mib = 64;
	struct stasis_dump_opts opts = { 0 };

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc)
			mib = strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--kill") == 0)
			opts.flags |= STASIS_DUMP_KILL;
		else if (strcmp(argv[i], "--children") == 0)
			opts.flags |= STASIS_DUMP_WITH_CHILDREN;
		else if (strcmp(argv[i], "--go") == 0 && i + 1 < argc)
			go = argv[++i];
		else if (strcmp(argv[i], "--child") == 0)
			child = 1;
		else if (strcmp(argv[i], "--child-exec") == 0 && i + 2 < argc) {
			child = 1;
			child_prog = argv[++i];
			child_arg = argv[++i];
		}
		else if (!images && argv[i][0] != '-')
			images = argv[i];
		else {
			say("USAGE selfdumper IMAGES_DIR [--mib N] [--kill] [--children] [--go FILE] "
			    "[--child | --child-exec PROGRAM ARG]");
			return 2;
		}
	}
	if (!images || mib == 0) {
		say("USAGE selfdumper IMAGES_DIR [--mib N] [--kill] [--children] [--go FILE]");
		return 2;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);

	if (child) {
		/* The child tells it runs (after its exec, if any) by closing its end of a
		 * close-on-exec pipe; nothing of the pipe is left when the dump comes. */
		int ready[2];
		if (pipe2(ready, O_CLOEXEC) != 0) {
			say("SETUP-ERROR pipe: %s", strerror(errno));
			return 2;
		}
		pid_t parent = getpid();
		pid_t c = fork();
		if (c < 0) {
			say("SETUP-ERROR fork: %s", strerror(errno));
			return 2;
		}
		if (c == 0) {
			close(ready[0]);
			prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
			if (getppid() != parent)
				_exit(0);
			if (child_prog) {
				execl(child_prog, child_prog, child_arg, (char *)NULL);
				say("SETUP-ERROR exec %s: %s", child_prog, strerror(errno));
				_exit(127);
			}
			close(ready[1]);
			while (!stop_requested)
				sleep_ms(5);
			_exit(0);
		}
		close(ready[1]);
		char b;
		while (read(ready[0], &b, 1) < 0 && errno == EINTR)
			;
		close(ready[0]);
		say("CHILD %d", (int)c);
	}

	int dir = open(images, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		say("SETUP-ERROR open %s: %s", images, strerror(errno));
		return 2;
	}

	size_t bytes = (size_t)mib << 20;
	size_t words = bytes / sizeof(uint64_t);
	uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		say("SETUP-ERROR mmap %lu MiB: %s", mib, strerror(errno));
		return 2;
	}
	for (size_t i = 0; i < words; i++)
		mem[i] = pattern(i);

	say("READY %d", (int)getpid());

	if (go) {
		/* Bounded: 60 s. */
		for (int i = 0; i < 12000 && access(go, F_OK) != 0; i++)
			sleep_ms(5);
	}

	int r = stasis_dump_self(dir, &opts);
	if (r < 0)
		say("ERROR %d %s", r, stasis_last_error());
	else if (r == 0)
		say("DUMPED %d", (int)getpid());
	else if (r == 1)
		say("RESTORED %d", (int)getpid());
	else
		say("ERROR unexpected return value %d", r);

	size_t bad = 0, first_bad = 0;
	for (size_t i = 0; i < words; i++) {
		if (mem[i] != pattern(i)) {
			if (!bad)
				first_bad = i;
			bad++;
		}
	}
	if (bad)
		say("FAIL %zu of %zu words differ, first at byte %zu", bad, words,
		    first_bad * sizeof(uint64_t));
	else
		say("PASS %lu MiB", mib);

	int answered = 0;
	while (!stop_requested) {
		while (answered < pings) {
			answered++;
			say("PONG %d", answered);
		}
		sleep_ms(5);
	}
	say("EXIT");
	return 0;
}

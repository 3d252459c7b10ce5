/* zdtm.c - helper library for stasis ZDTM-style tests (see zdtm.h). */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile sig_atomic_t zdtm_stop;
volatile sig_atomic_t zdtm_sigterm_count;

static int zdtm_nr_fail;
/* "FAIL: " or "FAIL: [role] " (zdtm_set_role) */
static char zdtm_fail_prefix[96] = "FAIL: ";
#define ZDTM_MAX_FAIL_LINES 50

static void zdtm_sigterm(int sig)
{
	(void)sig;
	zdtm_stop = 1;
	zdtm_sigterm_count++;
}

/* Write a whole line with write(2): no stdio buffering to lose or duplicate. */
static void zdtm_vline(const char *prefix, const char *fmt, va_list ap)
{
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "%s", prefix);

	n += vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	if (n == 0 || buf[n - 1] != '\n')
		buf[n++] = '\n';
	for (int off = 0; off < n;) {
		ssize_t w = write(STDOUT_FILENO, buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += w;
	}
}

void zdtm_print(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	zdtm_vline("", fmt, ap);
	va_end(ap);
}

void zdtm_init(int argc, char **argv)
{
	struct sigaction sa;
	sigset_t set;

	(void)argc;
	(void)argv;
	setvbuf(stdout, NULL, _IONBF, 0);
	setvbuf(stderr, NULL, _IONBF, 0);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = zdtm_sigterm;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;	/* no SA_RESTART: SIGTERM interrupts blocking calls */
	if (sigaction(SIGTERM, &sa, NULL))
		zdtm_die("sigaction(SIGTERM): %m");
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
}

void zdtm_ready(void)
{
	zdtm_print("READY");
}

void zdtm_wait_check(void)
{
	sigset_t block, old, susp;

	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &old);
	susp = old;
	sigdelset(&susp, SIGTERM);
	while (!zdtm_stop)
		sigsuspend(&susp);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

void zdtm_fail(const char *fmt, ...)
{
	va_list ap;

	zdtm_nr_fail++;
	if (zdtm_nr_fail > ZDTM_MAX_FAIL_LINES) {
		return;
	}
	va_start(ap, fmt);
	zdtm_vline(zdtm_fail_prefix, fmt, ap);
	va_end(ap);
	if (zdtm_nr_fail == ZDTM_MAX_FAIL_LINES)
		zdtm_print("FAIL: too many failures, suppressing the rest");
}

int zdtm_failed(void)
{
	return zdtm_nr_fail != 0;
}

void zdtm_die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	zdtm_vline(zdtm_fail_prefix, fmt, ap);
	va_end(ap);
	_exit(1);
}

void zdtm_pass_or_fail(void)
{
	if (zdtm_nr_fail) {
		if (zdtm_nr_fail > ZDTM_MAX_FAIL_LINES)
			zdtm_print("FAIL: %d failures in total", zdtm_nr_fail);
		exit(1);
	}
	zdtm_print("PASS");
	exit(0);
}

/* --- deterministic data ------------------------------------------------ */

void zdtm_fill(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t w = zdtm_pattern_word(seed, i / 8);
		memcpy(p + i, &w, 8);
	}
	for (; i < len; i++)
		p[i] = zdtm_pattern_byte(seed, i);
}

size_t zdtm_check(const void *buf, size_t len, uint64_t seed)
{
	const uint8_t *p = buf;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t w = zdtm_pattern_word(seed, i / 8), v;
		memcpy(&v, p + i, 8);
		if (v != w)
			break;
	}
	for (; i < len; i++)
		if (p[i] != zdtm_pattern_byte(seed, i))
			return i;
	return len;
}

size_t zdtm_check_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	for (size_t i = 0; i < len; i++)
		if (p[i])
			return i;
	return len;
}

uint64_t zdtm_hash(const void *buf, size_t len, uint64_t h)
{
	const uint8_t *p = buf;

	h ^= 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* --- /proc helpers ----------------------------------------------------- */

ssize_t zdtm_read_file(const char *path, void *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t off = 0;

	if (fd < 0)
		return -1;
	while (off < size) {
		ssize_t r = read(fd, (char *)buf + off, size - off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			close(fd);
			return -1;
		}
		if (r == 0)
			break;
		off += r;
	}
	close(fd);
	return off;
}

/* Static buffer: the helpers must not depend on malloc. */
static char zdtm_procbuf[1 << 20];

static int zdtm_parse_maps_line(const char *line, struct zdtm_vma *v)
{
	int n = 0;

	memset(v, 0, sizeof(*v));
	if (sscanf(line, "%lx-%lx %4s %lx %*s %*s %n", &v->start, &v->end,
		   v->perms, &v->pgoff, &n) < 4)
		return -1;
	if (n > 0) {
		const char *name = line + n;
		size_t l = strcspn(name, "\n");
		if (l >= sizeof(v->name))
			l = sizeof(v->name) - 1;
		memcpy(v->name, name, l);
		v->name[l] = 0;
	}
	return 0;
}

/* Iterate over /proc/self/maps; match() returns 1 to stop. */
static int zdtm_scan_maps(int (*match)(struct zdtm_vma *, const void *),
			  const void *arg, struct zdtm_vma *out)
{
	ssize_t len = zdtm_read_file("/proc/self/maps", zdtm_procbuf,
				     sizeof(zdtm_procbuf) - 1);
	char *line, *nl;

	if (len < 0)
		return -1;
	zdtm_procbuf[len] = 0;
	for (line = zdtm_procbuf; *line; line = nl + 1) {
		struct zdtm_vma v;

		nl = strchr(line, '\n');
		if (!nl)
			nl = line + strlen(line) - 1;
		if (zdtm_parse_maps_line(line, &v) == 0 && match(&v, arg)) {
			*out = v;
			return 0;
		}
		if (!nl[1])
			break;
	}
	return -1;
}

static int zdtm_match_addr(struct zdtm_vma *v, const void *arg)
{
	unsigned long a = (unsigned long)arg;

	return a >= v->start && a < v->end;
}

static int zdtm_match_name(struct zdtm_vma *v, const void *arg)
{
	return strcmp(v->name, arg) == 0;
}

int zdtm_find_vma(const void *addr, struct zdtm_vma *vma)
{
	return zdtm_scan_maps(zdtm_match_addr, addr, vma);
}

int zdtm_find_vma_by_name(const char *name, struct zdtm_vma *vma)
{
	return zdtm_scan_maps(zdtm_match_name, name, vma);
}

int zdtm_vma_flags(const void *addr, char *buf, size_t size)
{
	ssize_t len = zdtm_read_file("/proc/self/smaps", zdtm_procbuf,
				     sizeof(zdtm_procbuf) - 1);
	int in_vma = 0;
	char *line, *nl;

	if (len < 0)
		return -1;
	zdtm_procbuf[len] = 0;
	for (line = zdtm_procbuf; *line; line = nl + 1) {
		unsigned long start, end;

		nl = strchr(line, '\n');
		if (!nl)
			break;
		*nl = 0;
		/* header lines look like "start-end perms ..." */
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
			in_vma = (start == (unsigned long)addr);
		else if (in_vma && strncmp(line, "VmFlags:", 8) == 0) {
			const char *f = line + 8;

			while (*f == ' ')
				f++;
			snprintf(buf, size, "%s", f);
			return 0;
		}
	}
	return -1;
}

int64_t zdtm_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --- process trees ----------------------------------------------------- */

void zdtm_set_role(const char *role)
{
	if (role && *role)
		snprintf(zdtm_fail_prefix, sizeof(zdtm_fail_prefix), "FAIL: [%s] ", role);
	else
		snprintf(zdtm_fail_prefix, sizeof(zdtm_fail_prefix), "FAIL: ");
}

static int zdtm_sync_fd[2] = { -1, -1 };

void zdtm_tree_sync_init(void)
{
	if (pipe2(zdtm_sync_fd, O_CLOEXEC))
		zdtm_die("tree sync pipe: %m");
}

void zdtm_tree_ready(const void *msg, size_t len)
{
	static const char one = 1;
	ssize_t w;

	if (zdtm_sync_fd[1] < 0)
		zdtm_die("zdtm_tree_ready() without zdtm_tree_sync_init()");
	if (!msg || !len) {
		msg = &one;
		len = 1;
	}
	close(zdtm_sync_fd[0]);
	do
		w = write(zdtm_sync_fd[1], msg, len);
	while (w < 0 && errno == EINTR);
	if (w != (ssize_t)len)
		zdtm_die("tree sync write: %zd of %zu bytes (%m)", w, len);
	close(zdtm_sync_fd[1]);
	zdtm_sync_fd[0] = zdtm_sync_fd[1] = -1;
}

size_t zdtm_tree_wait(void *buf, size_t size)
{
	char tmp[512];
	size_t total = 0;

	if (zdtm_sync_fd[0] < 0)
		zdtm_die("zdtm_tree_wait() without zdtm_tree_sync_init()");
	close(zdtm_sync_fd[1]);
	for (;;) {
		ssize_t r = read(zdtm_sync_fd[0], tmp, sizeof(tmp));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			zdtm_die("tree sync read: %m");
		if (r == 0)
			break;
		for (ssize_t i = 0; i < r; i++, total++)
			if (buf && total < size)
				((char *)buf)[total] = tmp[i];
	}
	close(zdtm_sync_fd[0]);
	zdtm_sync_fd[0] = zdtm_sync_fd[1] = -1;
	return total;
}

pid_t zdtm_waitpid(pid_t pid, int *status)
{
	pid_t r;

	do
		r = waitpid(pid, status, 0);
	while (r < 0 && errno == EINTR);
	return r;
}

const char *zdtm_wait_str(int status)
{
	static char buf[64];

	if (WIFEXITED(status))
		snprintf(buf, sizeof(buf), "exited with %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, sizeof(buf), "killed by signal %d%s", WTERMSIG(status),
			 WCOREDUMP(status) ? " (core dumped)" : "");
	else
		snprintf(buf, sizeof(buf), "wait status %#x", status);
	return buf;
}

void zdtm_expect_exit(pid_t pid, int code, const char *who)
{
	int status;

	if (zdtm_waitpid(pid, &status) != pid) {
		zdtm_fail("waitpid(%s, pid %d): %m", who, (int)pid);
		return;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != code)
		zdtm_fail("%s (pid %d) %s, expected exit status %d", who, (int)pid,
			  zdtm_wait_str(status), code);
}

void zdtm_stop_child(pid_t pid, const char *who)
{
	if (kill(pid, SIGTERM))
		zdtm_fail("kill(%s, pid %d, SIGTERM): %m", who, (int)pid);
	zdtm_expect_exit(pid, 0, who);
}

void zdtm_child_exit(void)
{
	_exit(zdtm_nr_fail ? 1 : 0);
}

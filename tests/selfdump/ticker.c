/*
 * ticker: the target of the dump/restore attacks in crates/daemon/tests/selfdump.rs.
 *
 *   ticker COUNTER_FILE [--setresuid UID GID] [--nondumpable]
 *
 * Opens COUNTER_FILE (read-write, created if needed; it stays open as fd 3), optionally
 * changes identity, prints "READY <pid>" and then, every 2 ms, writes its tick count as a
 * fixed-width decimal line at offset 0 of the file, until SIGTERM ("EXIT", status 0). A
 * reader sees the count grow as long as the process runs; a frozen process stops it.
 *
 *   --setresuid UID GID  (run as root) drops the supplementary groups, sets all gids to GID
 *                        and the uids to (UID, UID, 0): real and effective UID, saved uid
 *                        still root, as a setuid-root program that dropped privileges
 *                        temporarily would. It then marks itself dumpable again, so the
 *                        saved uid is what sets it apart from UID's processes.
 *   --nondumpable        prctl(PR_SET_DUMPABLE, 0).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

static void on_term(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(1, buf, (size_t)n) < 0)
		return;
}

int main(int argc, char **argv)
{
	const char *counter = NULL;
	long uid = -1, gid = -1;
	int nondumpable = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--setresuid") == 0 && i + 2 < argc) {
			uid = strtol(argv[++i], NULL, 10);
			gid = strtol(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "--nondumpable") == 0) {
			nondumpable = 1;
		} else if (!counter && argv[i][0] != '-') {
			counter = argv[i];
		} else {
			say("USAGE ticker COUNTER_FILE [--setresuid UID GID] [--nondumpable]");
			return 2;
		}
	}
	if (!counter) {
		say("USAGE ticker COUNTER_FILE [--setresuid UID GID] [--nondumpable]");
		return 2;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);

	int fd = open(counter, O_RDWR | O_CREAT, 0644);
	if (fd < 0) {
		say("SETUP-ERROR open %s: %s", counter, strerror(errno));
		return 2;
	}
	if (fd != 3) {
		if (dup2(fd, 3) < 0) {
			say("SETUP-ERROR dup2: %s", strerror(errno));
			return 2;
		}
		close(fd);
		fd = 3;
	}

	if (uid >= 0) {
		if (setgroups(0, NULL) != 0 || setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0 ||
		    setresuid((uid_t)uid, (uid_t)uid, 0) != 0) {
			say("SETUP-ERROR changing ids: %s", strerror(errno));
			return 2;
		}
		/* Changing the effective uid cleared the dumpable flag; set it again. */
		if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) {
			say("SETUP-ERROR PR_SET_DUMPABLE 1: %s", strerror(errno));
			return 2;
		}
	}
	if (nondumpable && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
		say("SETUP-ERROR PR_SET_DUMPABLE 0: %s", strerror(errno));
		return 2;
	}

	say("READY %d", (int)getpid());
	unsigned long long ticks = 0;
	while (!stop_requested) {
		char line[32];
		int n = snprintf(line, sizeof(line), "%020llu\n", ++ticks);
		if (pwrite(fd, line, (size_t)n, 0) != n) {
			say("ERROR pwrite: %s", strerror(errno));
			return 1;
		}
		struct timespec ts = { 0, 2000000L };
		nanosleep(&ts, NULL);
	}
	say("EXIT");
	return 0;
}

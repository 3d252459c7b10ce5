/*
 * lpclient: the unprivileged client of crates/daemon/tests/least_privilege.rs (the attacks on
 * the daemon's restore path, and what must keep working).
 *
 *   lpclient dump IMAGES_DIR [--kill] [--threads N] [--pdeathsig SIG] [--fork-bomb N]
 *                            [--write-probe DIR] [--queued-signals N] [--terminal]
 *   lpclient restore IMAGES_DIR [--detach] [--seccomp] [--tty FD]
 *
 * dump: starts N extra threads (they sleep), sets its parent-death signal to SIG, queues N
 * blocked real-time signals to itself (--queued-signals: they stay pending), prints
 * "READY <pid>", checkpoints itself through stasisd (stasis_dump_self, with
 * STASIS_DUMP_KILL when --kill is given) and prints "DUMPED <pid>", "RESTORED <pid>" or
 * "ERROR <code> <message>". A restored copy then
 *   --fork-bomb N:    forks up to N children that wait, prints "FORKED <k> <errno name>"
 *                     (k children made; the error of the fork that failed, or "-"), and ends
 *                     them;
 *   --write-probe D:  tries to create D/probe-<pid> and prints "WRITE ok" or
 *                     "WRITE <errno name>";
 * and prints "PASS". Then it waits for SIGTERM ("EXIT", status 0).
 * --terminal: it runs on a terminal (stdin and stdout): before the dump it turns the
 * terminal's echo off; a restored copy prints "TTY fg=<1 if its group is the terminal's
 * foreground group> echo=<1 if echo is on>", then answers every line it reads from stdin with
 * "GOT <line>" until end of file (status 0) instead of waiting for SIGTERM.
 *
 * restore: asks stasisd to restore IMAGES_DIR (stasis_restore, always through the daemon,
 * whatever its ids, unlike `stasis restore`), prints "STARTED <pid>" and, without --detach,
 * "EXITED <status>"; "ERROR <code> <message>" (status 1) on failure. With --seccomp it
 * first confines itself with a seccomp filter (one that allows everything). With --tty FD it
 * passes its descriptor FD as the terminal to attach the job to (stasis_restore_tty).
 *
 * Every line is one write(2) to stdout (a log file opened O_APPEND).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "stasis.h"

static volatile sig_atomic_t stop_requested;

static void on_term(int sig)
{
	(void)sig;
	stop_requested = 1;
}

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
	if (write(1, buf, (size_t)n) < 0)
		return;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void *sleeper(void *arg)
{
	(void)arg;
	for (;;)
		sleep_ms(50);
	return NULL;
}

static const char *errname(int e)
{
	switch (e) {
	case EAGAIN: return "EAGAIN";
	case EACCES: return "EACCES";
	case EPERM: return "EPERM";
	case EROFS: return "EROFS";
	case ENOMEM: return "ENOMEM";
	default: return strerror(e);
	}
}

static void fork_bomb(int n)
{
	pid_t kids[4096];
	int made = 0, err = 0;
	if (n > 4096)
		n = 4096;
	while (made < n) {
		pid_t c = fork();
		if (c < 0) {
			err = errno;
			break;
		}
		if (c == 0) {
			for (;;)
				pause();
		}
		kids[made++] = c;
	}
	say("FORKED %d %s", made, err ? errname(err) : "-");
	for (int i = 0; i < made; i++)
		kill(kids[i], SIGKILL);
	for (int i = 0; i < made; i++)
		waitpid(kids[i], NULL, 0);
}

static int do_dump(int argc, char **argv)
{
	const char *images = argv[2], *probe = NULL;
	int threads = 0, pdeathsig = 0, bomb = 0, queued = 0, terminal = 0;
	struct stasis_dump_opts opts = { 0 };
	for (int i = 3; i < argc; i++) {
		if (strcmp(argv[i], "--kill") == 0)
			opts.flags |= STASIS_DUMP_KILL;
		else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
			threads = atoi(argv[++i]);
		else if (strcmp(argv[i], "--pdeathsig") == 0 && i + 1 < argc)
			pdeathsig = atoi(argv[++i]);
		else if (strcmp(argv[i], "--fork-bomb") == 0 && i + 1 < argc)
			bomb = atoi(argv[++i]);
		else if (strcmp(argv[i], "--write-probe") == 0 && i + 1 < argc)
			probe = argv[++i];
		else if (strcmp(argv[i], "--queued-signals") == 0 && i + 1 < argc)
			queued = atoi(argv[++i]);
		else if (strcmp(argv[i], "--terminal") == 0)
			terminal = 1;
		else {
			say("USAGE lpclient dump IMAGES_DIR [--kill] [--threads N] [--pdeathsig SIG] "
			    "[--fork-bomb N] [--write-probe DIR] [--queued-signals N]");
			return 2;
		}
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);

	int dir = open(images, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		say("SETUP-ERROR open %s: %s", images, strerror(errno));
		return 2;
	}
	for (int i = 0; i < threads; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, sleeper, NULL) != 0) {
			say("SETUP-ERROR pthread_create");
			return 2;
		}
	}
	if (pdeathsig && prctl(PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0) != 0) {
		say("SETUP-ERROR PR_SET_PDEATHSIG: %s", strerror(errno));
		return 2;
	}
	if (queued) {
		sigset_t rt;
		sigemptyset(&rt);
		sigaddset(&rt, SIGRTMIN + 1);
		sigprocmask(SIG_BLOCK, &rt, NULL);
		for (int i = 0; i < queued; i++) {
			union sigval v = { .sival_int = i };
			if (sigqueue(getpid(), SIGRTMIN + 1, v) != 0) {
				say("SETUP-ERROR sigqueue: %s", strerror(errno));
				return 2;
			}
		}
	}
	if (terminal) {
		struct termios t;
		if (tcgetattr(0, &t) != 0) {
			say("SETUP-ERROR tcgetattr: %s", strerror(errno));
			return 2;
		}
		t.c_lflag &= ~(tcflag_t)ECHO;
		if (tcsetattr(0, TCSANOW, &t) != 0) {
			say("SETUP-ERROR tcsetattr: %s", strerror(errno));
			return 2;
		}
	}
	say("READY %d", (int)getpid());
	int r = stasis_dump_self(dir, &opts);
	if (r < 0) {
		say("ERROR %d %s", r, stasis_last_error());
	} else if (r == 0) {
		say("DUMPED %d", (int)getpid());
	} else {
		say("RESTORED %d", (int)getpid());
		if (bomb)
			fork_bomb(bomb);
		if (probe) {
			char path[4096];
			snprintf(path, sizeof(path), "%s/probe-%d", probe, (int)getpid());
			int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			if (fd >= 0) {
				close(fd);
				unlink(path);
				say("WRITE ok");
			} else {
				say("WRITE %s", errname(errno));
			}
		}
	}
	say("PASS");
	if (terminal) {
		struct termios t;
		int echo = tcgetattr(0, &t) == 0 && (t.c_lflag & ECHO);
		say("TTY fg=%d echo=%d", tcgetpgrp(0) == getpgrp(), echo);
		char line[512];
		size_t have = 0;
		for (;;) {
			ssize_t n = read(0, line + have, sizeof(line) - 1 - have);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return 0;
			have += (size_t)n;
			char *nl;
			while ((nl = memchr(line, '\n', have)) != NULL) {
				*nl = 0;
				say("GOT %s", line);
				have -= (size_t)(nl + 1 - line);
				memmove(line, nl + 1, have);
			}
			if (have == sizeof(line) - 1)
				have = 0;
		}
	}
	while (!stop_requested)
		sleep_ms(5);
	say("EXIT");
	return 0;
}

static int do_restore(int argc, char **argv)
{
	int detach = 0, tty = -1;
	for (int i = 3; i < argc; i++) {
		if (strcmp(argv[i], "--detach") == 0) {
			detach = 1;
		} else if (strcmp(argv[i], "--tty") == 0 && i + 1 < argc) {
			tty = atoi(argv[++i]);
		} else if (strcmp(argv[i], "--seccomp") == 0) {
			struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
			struct sock_fprog prog = { 1, allow };
			if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
			    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
				say("ERROR -1 seccomp: %s", strerror(errno));
				return 1;
			}
		} else {
			say("USAGE lpclient restore IMAGES_DIR [--detach] [--seccomp] [--tty FD]");
			return 2;
		}
	}
	int dir = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		say("ERROR -1 open %s: %s", argv[2], strerror(errno));
		return 1;
	}
	int pid = 0;
	int r = tty >= 0 ? stasis_restore_tty(dir, tty, detach, &pid)
			 : stasis_restore(dir, detach, &pid);
	if (pid > 0)
		say("STARTED %d", pid);
	if (r < 0) {
		say("ERROR %d %s", r, stasis_last_error());
		return 1;
	}
	if (!detach)
		say("EXITED %d", r);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "dump") == 0)
		return do_dump(argc, argv);
	if (argc >= 3 && strcmp(argv[1], "restore") == 0)
		return do_restore(argc, argv);
	say("USAGE lpclient dump|restore IMAGES_DIR [options]");
	return 2;
}

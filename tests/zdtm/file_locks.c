/*
 * file_locks: locks held by the root come back held, with the same ranges
 * and types, and still block other processes.
 *
 * The root holds POSIX record locks on two ranges of posix.dat (write on
 * bytes 0-99, read on 150-199), an OFD write lock on bytes 10-19 of
 * ofd.dat, an exclusive flock lock on flock.dat and a read lease on
 * lease.dat.  Child c1 holds nothing and waits for SIGTERM.  Child c2 is
 * blocked in F_SETLKW for a write lock on bytes 0-99 of posix.dat.
 *
 * After SIGTERM the root checks the `lock:` lines of its own fdinfo (one
 * line per lock, exact class, type and range) and F_GETLEASE, then sends
 * SIGTERM to c1, which opens the files itself and checks with F_GETLK,
 * F_OFD_GETLK and flock(LOCK_NB) that each lock is held, by the root for
 * the POSIX ones, and that the gap between the POSIX ranges is free.  Then
 * the root checks that c2 is still waiting, releases bytes 0-99, and c2
 * must get the lock (it reports it over a pipe) and exit 0.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#define POSIX_FD 10
#define OFD_FD 11
#define FLOCK_FD 12
#define LEASE_FD 13

static pid_t root_pid;

static int make_file(const char *name, int flags, int fd_want)
{
	char buf[200];
	int fd = open(name, O_RDWR | O_CREAT | O_TRUNC, 0644);

	if (fd < 0)
		zdtm_die("create %s: %m", name);
	memset(buf, 'x', sizeof(buf));
	if (write(fd, buf, sizeof(buf)) != sizeof(buf))
		zdtm_die("write %s: %m", name);
	close(fd);
	fd = open(name, flags);
	if (fd < 0)
		zdtm_die("open %s: %m", name);
	if (dup2(fd, fd_want) != fd_want)
		zdtm_die("dup2 %s: %m", name);
	close(fd);
	return fd_want;
}

static struct flock range(short type, off_t start, off_t len)
{
	struct flock l;

	memset(&l, 0, sizeof(l));
	l.l_type = type;
	l.l_whence = SEEK_SET;
	l.l_start = start;
	l.l_len = len;
	return l;
}

/* Who conflicts with a write lock on [start, start+len): F_GETLK or F_OFD_GETLK. */
static void expect_held(int fd, int cmd, off_t start, off_t len, short type, pid_t pid,
			const char *what)
{
	struct flock l = range(F_WRLCK, start, len);

	if (fcntl(fd, cmd, &l) < 0) {
		zdtm_fail("%s: GETLK: %m", what);
		return;
	}
	if (l.l_type != type)
		zdtm_fail("%s: lock type %d, want %d", what, l.l_type, type);
	else if (type != F_UNLCK && l.l_pid != pid)
		zdtm_fail("%s: held by pid %d, want %d", what, l.l_pid, pid);
	else if (type != F_UNLCK && (l.l_start != start || l.l_len != len))
		zdtm_fail("%s: range %lld+%lld, want %lld+%lld", what, (long long)l.l_start,
			  (long long)l.l_len, (long long)start, (long long)len);
}

static void c1_check(void)
{
	int fd;

	fd = open("posix.dat", O_RDWR);
	if (fd < 0)
		zdtm_die("open posix.dat: %m");
	expect_held(fd, F_GETLK, 0, 100, F_WRLCK, root_pid, "posix.dat 0-99");
	expect_held(fd, F_GETLK, 150, 50, F_RDLCK, root_pid, "posix.dat 150-199");
	expect_held(fd, F_GETLK, 100, 50, F_UNLCK, 0, "posix.dat 100-149");
	close(fd);

	fd = open("ofd.dat", O_RDWR);
	if (fd < 0)
		zdtm_die("open ofd.dat: %m");
	expect_held(fd, F_OFD_GETLK, 10, 10, F_WRLCK, -1, "ofd.dat 10-19");
	expect_held(fd, F_OFD_GETLK, 0, 10, F_UNLCK, 0, "ofd.dat 0-9");
	close(fd);

	fd = open("flock.dat", O_RDONLY);
	if (fd < 0)
		zdtm_die("open flock.dat: %m");
	if (flock(fd, LOCK_SH | LOCK_NB) == 0)
		zdtm_fail("flock.dat: got a shared flock lock, the root's exclusive one is gone");
	else if (errno != EWOULDBLOCK)
		zdtm_fail("flock.dat: flock: %m");
	close(fd);
}

/* The root's own fdinfo: exactly the lock lines `want` (class, type, start, end). */
static void expect_fdinfo(int fd, const char *want[], int n, const char *what)
{
	char path[64], buf[4096], cls[16], mode[16], type[16], end[32], dev[64];
	long long start;
	int pid, got = 0, i;
	ssize_t len;
	char *line;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	len = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (len < 0) {
		zdtm_fail("%s: read %s: %m", what, path);
		return;
	}
	buf[len] = 0;
	for (line = strstr(buf, "lock:"); line; line = strstr(line + 1, "lock:")) {
		char desc[96];

		if (sscanf(line, "lock:\t%*d: %15s %15s %15s %d %63s %lld %31s", cls, mode, type,
			   &pid, dev, &start, end) != 7) {
			zdtm_fail("%s: cannot parse %.60s", what, line);
			return;
		}
		snprintf(desc, sizeof(desc), "%s %s %s %lld %s", cls, mode, type, start, end);
		for (i = 0; i < n; i++)
			if (!strcmp(desc, want[i]))
				break;
		if (i == n)
			zdtm_fail("%s: unexpected lock '%s'", what, desc);
		else if (strcmp(cls, "OFDLCK") && pid != root_pid)
			zdtm_fail("%s: lock '%s' of pid %d", what, desc, pid);
		got++;
	}
	if (got != n)
		zdtm_fail("%s: %d locks, want %d", what, got, n);
}

int main(int argc, char **argv)
{
	static const char *posix[] = {"POSIX ADVISORY WRITE 0 99", "POSIX ADVISORY READ 150 199"};
	static const char *ofd[] = {"OFDLCK ADVISORY WRITE 10 19"};
	static const char *fl[] = {"FLOCK ADVISORY WRITE 0 EOF"};
	static const char *lease[] = {"LEASE ACTIVE READ 0 EOF"};
	struct flock l;
	pid_t c1, c2;
	int report[2];
	char c;

	zdtm_init(argc, argv);
	root_pid = getpid();
	make_file("posix.dat", O_RDWR, POSIX_FD);
	make_file("ofd.dat", O_RDWR, OFD_FD);
	make_file("flock.dat", O_RDONLY, FLOCK_FD);
	make_file("lease.dat", O_RDONLY, LEASE_FD);

	l = range(F_WRLCK, 0, 100);
	if (fcntl(POSIX_FD, F_SETLK, &l) < 0)
		zdtm_die("F_SETLK write 0-99: %m");
	l = range(F_RDLCK, 150, 50);
	if (fcntl(POSIX_FD, F_SETLK, &l) < 0)
		zdtm_die("F_SETLK read 150-199: %m");
	l = range(F_WRLCK, 10, 10);
	if (fcntl(OFD_FD, F_OFD_SETLK, &l) < 0)
		zdtm_die("F_OFD_SETLK: %m");
	if (flock(FLOCK_FD, LOCK_EX | LOCK_NB) < 0)
		zdtm_die("flock: %m");
	if (fcntl(LEASE_FD, F_SETLEASE, F_RDLCK) < 0)
		zdtm_die("F_SETLEASE: %m");

	if (pipe(report) < 0)
		zdtm_die("pipe: %m");
	zdtm_tree_sync_init();
	c1 = fork();
	if (c1 < 0)
		zdtm_die("fork: %m");
	if (c1 == 0) {
		zdtm_set_role("c1");
		close(report[0]);
		close(report[1]);
		/* The descriptions came with fork(): drop them, c1 checks through its own. */
		close(POSIX_FD);
		close(OFD_FD);
		close(FLOCK_FD);
		close(LEASE_FD);
		zdtm_tree_ready("1", 1);
		zdtm_wait_check();
		c1_check();
		zdtm_child_exit();
	}
	c2 = fork();
	if (c2 < 0)
		zdtm_die("fork: %m");
	if (c2 == 0) {
		zdtm_set_role("c2");
		close(report[0]);
		close(OFD_FD);
		close(FLOCK_FD);
		close(LEASE_FD);
		zdtm_tree_ready("1", 1);
		l = range(F_WRLCK, 0, 100);
		while (fcntl(POSIX_FD, F_SETLKW, &l) < 0)
			if (errno != EINTR)
				zdtm_die("F_SETLKW: %m");
		if (write(report[1], "L", 1) != 1)
			zdtm_die("report: %m");
		zdtm_child_exit();
	}
	close(report[1]);
	if (zdtm_tree_wait(NULL, 0) != 2)
		zdtm_die("children did not report ready");
	zdtm_ready();
	zdtm_wait_check();

	expect_fdinfo(POSIX_FD, posix, 2, "posix.dat");
	expect_fdinfo(OFD_FD, ofd, 1, "ofd.dat");
	expect_fdinfo(FLOCK_FD, fl, 1, "flock.dat");
	expect_fdinfo(LEASE_FD, lease, 1, "lease.dat");
	{
		int le = fcntl(LEASE_FD, F_GETLEASE);

		if (le != F_RDLCK)
			zdtm_fail("lease.dat: F_GETLEASE gives %d, want F_RDLCK (%d)", le, F_RDLCK);
	}
	zdtm_stop_child(c1, "c1");

	/* c2 must still be waiting for bytes 0-99, and get them once they are free. */
	{
		struct pollfd p = {.fd = report[0], .events = POLLIN};

		if (poll(&p, 1, 200) != 0)
			zdtm_fail("c2 got the write lock on posix.dat while the root held it");
		l = range(F_UNLCK, 0, 100);
		if (fcntl(POSIX_FD, F_SETLK, &l) < 0)
			zdtm_fail("F_SETLK unlock 0-99: %m");
		while (poll(&p, 1, 3000) < 0 && errno == EINTR)
			;
		if (read(report[0], &c, 1) != 1)
			zdtm_fail("c2 did not get the write lock once the root released it");
	}
	zdtm_expect_exit(c2, 0, "c2");
	zdtm_pass_or_fail();
}

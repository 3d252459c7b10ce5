/*
 * file_status_flags: file status flags (O_NONBLOCK, O_APPEND, O_DIRECT,
 * O_NOATIME, O_ASYNC) belong to open file descriptions, not to fds.
 *
 * Several descriptions of one object with different flags, and dup'ed fds
 * that share a description:
 *   regular file: O_WRONLY|O_APPEND (+ a dup), O_WRONLY, O_RDONLY|
 *                 O_NONBLOCK|O_NOATIME, O_RDWR|O_DIRECT, O_RDONLY|O_ASYNC,
 *                 O_WRONLY|O_SYNC
 *   directory:    O_NONBLOCK and plain
 *   /dev/null:    O_RDWR|O_APPEND|O_NONBLOCK and O_RDWR
 *   pipe P:       read end O_NONBLOCK (+ a dup), write end blocking, a
 *                 second write description (opened via /proc/self/fd)
 *                 O_NONBLOCK (+ a dup), a second read description, blocking
 *   pipe R:       a second read description (O_NONBLOCK, via /proc) at a lower
 *                 fd than the pipe's own read end
 *   pipe Q:       write end O_DIRECT (packet mode), read end O_ASYNC
 * (F_SETFL sets O_ASYNC only on files that can signal I/O, such as pipes and
 * inotify; open() stores it for any file.)
 *   eventfd (O_NONBLOCK, + a dup) and one without flags, timerfd,
 *   signalfd, epoll (O_NONBLOCK and plain), inotify (O_NONBLOCK|O_ASYNC):
 *                 flags set with F_SETFL after creation
 *   memfd:        four descriptions: O_RDWR, O_RDWR|O_APPEND|O_NONBLOCK,
 *                 O_RDONLY|O_DIRECT|O_DSYNC, O_RDONLY|O_ASYNC
 *   deleted file: O_RDWR|O_APPEND (+ a dup)
 *
 * On SIGTERM: every fd's F_GETFL is unchanged; kcmp(KCMP_FILE) says two
 * fds are one description exactly when they were; toggling O_NONBLOCK on
 * any fd shows on the fds of its description and nowhere else.  Pipe P
 * behaves: its non-blocking read end says EAGAIN when empty, its
 * non-blocking write description fills the pipe up to EAGAIN, and the
 * bytes come out of the read end.  Appends land at the end of the file.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define MAXFD 40

struct ent {
	const char *name;
	int fd;
	int desc;	/* fds with the same desc share one description */
	int flags;	/* F_GETFL at set-up */
};

static struct ent ents[MAXFD];
static int nents, ndesc;

/* A new description: returns fd. */
static int add(const char *name, int fd)
{
	if (fd < 0)
		zdtm_die("%s: %m", name);
	if (nents == MAXFD)
		zdtm_die("too many fds");
	ents[nents++] = (struct ent){ name, fd, ndesc++, 0 };
	return fd;
}

/* Another fd of the description of fd. */
static int add_dup(const char *name, int fd)
{
	int d = dup(fd);

	for (int i = 0; i < nents; i++)
		if (ents[i].fd == fd) {
			if (d < 0)
				zdtm_die("dup %s: %m", ents[i].name);
			ents[nents++] = (struct ent){ name, d, ents[i].desc, 0 };
			return d;
		}
	zdtm_die("add_dup: fd %d unknown", fd);
}

static void setfl(int fd, int add_flags)
{
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | add_flags))
		zdtm_die("F_SETFL %#o on fd %d: %m", add_flags, fd);
}

static int reopen(int fd, int flags)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	return open(path, flags);
}

static int kcmp_file(int a, int b)
{
	pid_t me = getpid();

	return syscall(SYS_kcmp, me, me, KCMP_FILE, a, b);
}

static void check_sharing(void)
{
	for (int i = 0; i < nents; i++)
		for (int j = i + 1; j < nents; j++) {
			int same = ents[i].desc == ents[j].desc;
			int k = kcmp_file(ents[i].fd, ents[j].fd);

			if (k < 0)
				zdtm_fail("kcmp %s, %s: %m", ents[i].name, ents[j].name);
			else if ((k == 0) != same)
				zdtm_fail("%s and %s %s one description, but were%s", ents[i].name,
					  ents[j].name, k == 0 ? "are" : "are not",
					  same ? "" : " not");
		}
	/* toggling O_NONBLOCK on one fd shows exactly on its description's fds */
	for (int i = 0; i < nents; i++) {
		int was[MAXFD];

		for (int j = 0; j < nents; j++)
			was[j] = fcntl(ents[j].fd, F_GETFL);
		if (fcntl(ents[i].fd, F_SETFL, was[i] ^ O_NONBLOCK)) {
			zdtm_fail("F_SETFL on %s: %m", ents[i].name);
			continue;
		}
		for (int j = 0; j < nents; j++) {
			int now = fcntl(ents[j].fd, F_GETFL);
			int changed = (now ^ was[j]) & O_NONBLOCK;
			int same = ents[i].desc == ents[j].desc;

			if (!changed != !same)
				zdtm_fail("O_NONBLOCK toggled on %s: %s %s (F_GETFL %#o)",
					  ents[i].name, ents[j].name,
					  changed ? "changed too" : "did not change", now);
		}
		fcntl(ents[i].fd, F_SETFL, was[i]);
	}
}

int main(int argc, char **argv)
{
	static char block[8192] __attribute__((aligned(4096)));
	int reg_app, p[2], q[2], rp[2], p_w2, mfd, del, efd, ino, ep;
	sigset_t sigs;
	struct stat st;
	char buf[4096];
	off_t size_before;
	ssize_t r;
	size_t n;

	zdtm_init(argc, argv);
	memset(block, 'r', sizeof(block));

	/* regular file */
	int fd = open("reg", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, block, sizeof(block)) != sizeof(block))
		zdtm_die("create reg: %m");
	close(fd);
	reg_app = add("reg O_APPEND", open("reg", O_WRONLY | O_APPEND));
	add_dup("reg O_APPEND dup", reg_app);
	add("reg plain", open("reg", O_WRONLY));
	add("reg O_NONBLOCK|O_NOATIME", open("reg", O_RDONLY | O_NONBLOCK | O_NOATIME));
	add("reg O_DIRECT", open("reg", O_RDWR | O_DIRECT));
	add("reg O_ASYNC", open("reg", O_RDONLY | O_ASYNC));
	add("reg O_SYNC", open("reg", O_WRONLY | O_SYNC));

	/* directory and character device */
	add("dir O_NONBLOCK", open(".", O_RDONLY | O_DIRECTORY | O_NONBLOCK));
	add("dir plain", open(".", O_RDONLY | O_DIRECTORY));
	add("null O_APPEND|O_NONBLOCK", open("/dev/null", O_RDWR | O_APPEND | O_NONBLOCK));
	add("null plain", open("/dev/null", O_RDWR));

	/* pipes */
	if (pipe(p) || pipe(q))
		zdtm_die("pipe: %m");
	add("P read", p[0]);
	setfl(p[0], O_NONBLOCK);
	add_dup("P read dup", p[0]);
	add("P write", p[1]);
	p_w2 = add("P write 2", reopen(p[1], O_WRONLY));
	setfl(p_w2, O_NONBLOCK);
	add_dup("P write 2 dup", p_w2);
	add("P read 2", reopen(p[0], O_RDONLY));
	/* pipe R: a description opened via /proc at a lower fd than the pipe's own */
	if (pipe(rp))
		zdtm_die("pipe: %m");
	add("R read 2 (lower fd)", reopen(rp[0], O_RDONLY | O_NONBLOCK));
	if (dup2(rp[0], 60) != 60)
		zdtm_die("dup2: %m");
	close(rp[0]);
	add("R read (fd 60)", 60);
	add("R write", rp[1]);
	add("Q read", q[0]);
	setfl(q[0], O_ASYNC);
	add("Q write", q[1]);
	setfl(q[1], O_DIRECT);

	/* anonymous-inode files */
	efd = add("eventfd O_NONBLOCK", eventfd(0, 0));
	setfl(efd, O_NONBLOCK);
	add_dup("eventfd dup", efd);
	add("eventfd plain", eventfd(0, 0));
	setfl(add("timerfd", timerfd_create(CLOCK_MONOTONIC, 0)), O_NONBLOCK);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGUSR1);
	setfl(add("signalfd", signalfd(-1, &sigs, 0)), O_NONBLOCK);
	ep = add("epoll O_NONBLOCK", epoll_create1(0));
	setfl(ep, O_NONBLOCK);
	add("epoll plain", epoll_create1(0));
	ino = add("inotify", inotify_init1(0));
	setfl(ino, O_NONBLOCK | O_ASYNC);

	/* memfd and deleted file */
	mfd = add("memfd", memfd_create("flags", 0));
	if (write(mfd, "memfd", 5) != 5)
		zdtm_die("write memfd: %m");
	add("memfd O_APPEND|O_NONBLOCK", reopen(mfd, O_RDWR | O_APPEND | O_NONBLOCK));
	add("memfd O_DIRECT|O_DSYNC", reopen(mfd, O_RDONLY | O_DIRECT | O_DSYNC));
	add("memfd O_ASYNC", reopen(mfd, O_RDONLY | O_ASYNC));
	del = add("deleted O_APPEND", open("del", O_RDWR | O_CREAT | O_APPEND | O_TRUNC, 0600));
	if (write(del, "deleted", 7) != 7 || unlink("del"))
		zdtm_die("deleted file: %m");
	add_dup("deleted dup", del);

	for (int i = 0; i < nents; i++)
		ents[i].flags = fcntl(ents[i].fd, F_GETFL);

	zdtm_ready();
	zdtm_wait_check();

	for (int i = 0; i < nents; i++) {
		int fl = fcntl(ents[i].fd, F_GETFL);

		if (fl != ents[i].flags)
			zdtm_fail("%s (fd %d): F_GETFL %#o, expected %#o", ents[i].name, ents[i].fd,
				  fl, ents[i].flags);
	}
	check_sharing();

	/* pipe P: empty non-blocking read end; non-blocking second write description
	 * (only when the flags are right: a blocking end would hang the test) */
	if (!(fcntl(p[0], F_GETFL) & O_NONBLOCK) || !(fcntl(p_w2, F_GETFL) & O_NONBLOCK))
		zdtm_pass_or_fail();
	r = read(p[0], buf, sizeof(buf));
	if (r != -1 || errno != EAGAIN)
		zdtm_fail("P: read on the empty O_NONBLOCK read end returned %zd (%m)", r);
	memset(buf, 'p', sizeof(buf));
	for (n = 0; n < (4 << 20) && (r = write(p_w2, buf, sizeof(buf))) > 0; n += r)
		;
	if (r != -1 || errno != EAGAIN)
		zdtm_fail("P: write to the O_NONBLOCK write description returned %zd (%m) after "
			  "%zu bytes", r, n);
	while ((r = read(p[0], buf, sizeof(buf))) > 0)
		n -= r;
	if (n != 0)
		zdtm_fail("P: %zu bytes written did not come out of the read end", n);

	/* appends */
	/* (a copy that ran before from the same images may have appended already) */
	if (fstat(reg_app, &st))
		zdtm_fail("fstat reg: %m");
	size_before = st.st_size;
	if (write(reg_app, "A", 1) != 1 || fstat(reg_app, &st) || st.st_size != size_before + 1)
		zdtm_fail("reg: an O_APPEND write did not land at the end (size %lld, was %lld)",
			  (long long)st.st_size, (long long)size_before);
	if (write(del, "D", 1) != 1 || fstat(del, &st) || st.st_size != 8)
		zdtm_fail("deleted: an O_APPEND write did not land at the end (size %lld)",
			  (long long)st.st_size);
	zdtm_pass_or_fail();
}

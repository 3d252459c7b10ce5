/*
 * tree_shared_file: a parent and a child share one open file description.
 *
 * The root opens shared.dat before fork(), so both processes have fd S on
 * the same open file description: one file offset and one set of status
 * flags, but separate fd flags.  Before READY the root writes 100 bytes,
 * the child writes 200 (the shared offset is then 300) and sets
 * O_NONBLOCK through its fd; the root sets FD_CLOEXEC on its own fd only.
 * Both then open own.dat separately (two descriptions: offsets 33 in the
 * root, 70 in the child).
 *
 * After SIGTERM the root checks its offset (300), flags (O_RDWR|O_NONBLOCK,
 * FD_CLOEXEC), the file content, and with kcmp(KCMP_FILE) that S is still
 * one description in both processes while own.dat is two.  Then it writes
 * 300 bytes (offset 600) and sends SIGTERM to the child, which must see
 * offset 600 and the root's data (the offset moved under it), O_NONBLOCK,
 * no FD_CLOEXEC, its own.dat offset 70, and then writes 400 bytes.  After
 * reaping the child the root must see offset 1000 and all four pieces in
 * the file.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define S_FD 10
#define OWN_FD 11

static pid_t root_pid, child_pid;

static void put(int fd, size_t len, uint64_t seed)
{
	static uint8_t buf[4096];

	zdtm_fill(buf, len, seed);
	if (write(fd, buf, len) != (ssize_t)len)
		zdtm_fail("write(%zu bytes): %m", len);
}

/* pread [off, off+len) and compare with pattern seed */
static void expect(int fd, off_t off, size_t len, uint64_t seed, const char *what)
{
	static uint8_t buf[4096];
	ssize_t r = pread(fd, buf, len, off);
	size_t d;

	if (r != (ssize_t)len)
		zdtm_fail("pread %s: %zd of %zu bytes (%m)", what, r, len);
	else if ((d = zdtm_check(buf, len, seed)) != len)
		zdtm_fail("%s differs at byte %zu", what, (size_t)off + d);
}

static void expect_offset(int fd, off_t want, const char *what)
{
	off_t o = lseek(fd, 0, SEEK_CUR);

	if (o != want)
		zdtm_fail("%s offset %lld, expected %lld", what, (long long)o, (long long)want);
}

static void expect_flags(int fd, int fl, int fdfl, const char *what)
{
	int f = fcntl(fd, F_GETFL), d = fcntl(fd, F_GETFD);

	if ((f & (O_ACCMODE | O_NONBLOCK | O_APPEND)) != fl)
		zdtm_fail("%s F_GETFL %#o, expected %#o", what, f, fl);
	if (d != fdfl)
		zdtm_fail("%s F_GETFD %#x, expected %#x", what, d, fdfl);
}

static long kcmp_file(pid_t a, pid_t b, int fa, int fb)
{
	return syscall(SYS_kcmp, a, b, KCMP_FILE, fa, fb);
}

static void check_kcmp(void)
{
	long r = kcmp_file(root_pid, child_pid, S_FD, S_FD);

	if (r < 0)
		zdtm_fail("kcmp: %m");
	else if (r != 0)
		zdtm_fail("kcmp: shared.dat is not one description in root and child any more");
	r = kcmp_file(root_pid, child_pid, OWN_FD, OWN_FD);
	if (r < 0)
		zdtm_fail("kcmp: %m");
	else if (r == 0)
		zdtm_fail("kcmp: the two own.dat fds became one description");
}

static void child(void)
{
	int fd;

	zdtm_set_role("child");
	put(S_FD, 200, 2);
	if (fcntl(S_FD, F_SETFL, O_NONBLOCK))
		zdtm_die("F_SETFL: %m");
	fd = open("own.dat", O_RDWR | O_CREAT, 0644);
	if (fd < 0 || dup2(fd, OWN_FD) != OWN_FD || close(fd))
		zdtm_die("own.dat: %m");
	put(OWN_FD, 70, 5);
	zdtm_tree_ready(NULL, 0);

	zdtm_wait_check();

	if (getppid() != root_pid)
		zdtm_fail("getppid() %d, expected %d", (int)getppid(), (int)root_pid);
	expect_offset(S_FD, 600, "shared.dat");
	expect_flags(S_FD, O_RDWR | O_NONBLOCK, 0, "shared.dat");
	expect(S_FD, 0, 100, 1, "shared.dat [0,100)");
	expect(S_FD, 100, 200, 2, "shared.dat [100,300)");
	expect(S_FD, 300, 300, 3, "shared.dat [300,600)");
	expect_offset(OWN_FD, 70, "own.dat");
	expect_flags(OWN_FD, O_RDWR, 0, "own.dat");
	put(S_FD, 400, 4);
	zdtm_child_exit();
}

int main(int argc, char **argv)
{
	struct stat st;
	int fd;

	zdtm_init(argc, argv);
	root_pid = getpid();
	fd = open("shared.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || dup2(fd, S_FD) != S_FD || close(fd))
		zdtm_die("shared.dat: %m");
	put(S_FD, 100, 1);
	zdtm_tree_sync_init();
	child_pid = fork();
	if (child_pid < 0)
		zdtm_die("fork: %m");
	if (child_pid == 0)
		child();
	if (zdtm_tree_wait(NULL, 0) != 1)
		zdtm_die("the child did not get ready");
	expect_offset(S_FD, 300, "set-up: shared.dat");
	if (fcntl(S_FD, F_SETFD, FD_CLOEXEC))
		zdtm_die("F_SETFD: %m");
	fd = open("own.dat", O_RDWR);
	if (fd < 0 || dup2(fd, OWN_FD) != OWN_FD || close(fd) || lseek(OWN_FD, 33, SEEK_SET) != 33)
		zdtm_die("own.dat: %m");
	check_kcmp();
	if (zdtm_failed())
		zdtm_die("set-up failed");
	zdtm_ready();

	zdtm_wait_check();

	expect_offset(S_FD, 300, "shared.dat");
	expect_flags(S_FD, O_RDWR | O_NONBLOCK, FD_CLOEXEC, "shared.dat");
	expect(S_FD, 0, 100, 1, "shared.dat [0,100)");
	expect(S_FD, 100, 200, 2, "shared.dat [100,300)");
	expect_offset(OWN_FD, 33, "own.dat");
	expect_flags(OWN_FD, O_RDWR, 0, "own.dat");
	check_kcmp();
	put(S_FD, 300, 3);
	zdtm_stop_child(child_pid, "child");
	expect_offset(S_FD, 1000, "shared.dat after the child wrote");
	expect(S_FD, 600, 400, 4, "shared.dat [600,1000)");
	if (fstat(S_FD, &st) || st.st_size != 1000)
		zdtm_fail("shared.dat size %lld, expected 1000", (long long)st.st_size);
	zdtm_pass_or_fail();
}

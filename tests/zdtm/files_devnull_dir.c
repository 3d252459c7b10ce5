/*
 * files_devnull_dir: device and directory descriptors, and the standard
 * descriptors the test was started with.
 *
 *   /dev/null opened O_RDWR, /dev/zero opened O_RDONLY, and the
 *   directory "sub" (containing inner.txt) opened O_RDONLY|O_DIRECTORY;
 *   fds 0, 1, 2 as set up by the harness (stdin /dev/null, stdout and
 *   stderr appending to test.log).
 * On SIGTERM every one of these fds must refer to the same object as
 * before (st_dev/st_ino/st_mode/st_rdev), with the same F_GETFL and
 * F_GETFD flags; whether stdout and stderr share one open file
 * description (kcmp) must be unchanged.  They must also work: writes to
 * /dev/null succeed and reads give EOF, /dev/zero reads zeros, and
 * openat() relative to the directory fd finds inner.txt.
 */
#include "zdtm.h"

#include <fcntl.h>
#include <linux/kcmp.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NFD 6
static struct fdi {
	const char *name;
	int fd;
	struct stat st;
	int fl, fdfl;
} fds[NFD] = {
	{ "stdin", 0 }, { "stdout", 1 }, { "stderr", 2 },
	{ "/dev/null", -1 }, { "/dev/zero", -1 }, { "dir sub", -1 },
};

static long kcmp_out_err(void)
{
	return syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, 1, 2);
}

int main(int argc, char **argv)
{
	char buf[4096];
	struct stat st;
	long kcmp_before;
	int fd;

	zdtm_init(argc, argv);
	if (mkdir("sub", 0755))
		zdtm_die("mkdir: %m");
	fd = open("sub/inner.txt", O_WRONLY | O_CREAT, 0644);
	if (fd < 0 || write(fd, "inner content\n", 14) != 14)
		zdtm_die("inner.txt: %m");
	close(fd);
	fds[3].fd = open("/dev/null", O_RDWR);
	fds[4].fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	fds[5].fd = open("sub", O_RDONLY | O_DIRECTORY);
	for (int i = 0; i < NFD; i++) {
		if (fds[i].fd < 0 || fstat(fds[i].fd, &fds[i].st))
			zdtm_die("%s: %m", fds[i].name);
		fds[i].fl = fcntl(fds[i].fd, F_GETFL);
		fds[i].fdfl = fcntl(fds[i].fd, F_GETFD);
	}
	kcmp_before = kcmp_out_err();

	zdtm_ready();
	zdtm_wait_check();

	for (int i = 0; i < NFD; i++) {
		struct fdi *f = &fds[i];

		if (fstat(f->fd, &st)) {
			zdtm_fail("%s: fstat(%d): %m", f->name, f->fd);
			continue;
		}
		if (st.st_dev != f->st.st_dev || st.st_ino != f->st.st_ino ||
		    st.st_mode != f->st.st_mode || st.st_rdev != f->st.st_rdev)
			zdtm_fail("%s: fd %d is dev %#lx ino %lu mode %o rdev %#lx, was dev %#lx "
				  "ino %lu mode %o rdev %#lx", f->name, f->fd, (long)st.st_dev,
				  (long)st.st_ino, st.st_mode, (long)st.st_rdev, (long)f->st.st_dev,
				  (long)f->st.st_ino, f->st.st_mode, (long)f->st.st_rdev);
		if (fcntl(f->fd, F_GETFL) != f->fl || fcntl(f->fd, F_GETFD) != f->fdfl)
			zdtm_fail("%s: flags %#o/%#x, were %#o/%#x", f->name, fcntl(f->fd, F_GETFL),
				  fcntl(f->fd, F_GETFD), f->fl, f->fdfl);
	}
	if (kcmp_out_err() != kcmp_before)
		zdtm_fail("kcmp(stdout, stderr) = %ld, was %ld (sharing changed)", kcmp_out_err(),
			  kcmp_before);

	if (write(fds[3].fd, buf, sizeof(buf)) != sizeof(buf) || read(fds[3].fd, buf, 10) != 0)
		zdtm_fail("/dev/null does not behave like /dev/null");
	memset(buf, 0xaa, sizeof(buf));
	if (read(fds[4].fd, buf, sizeof(buf)) != sizeof(buf) ||
	    zdtm_check_zero(buf, sizeof(buf)) != sizeof(buf))
		zdtm_fail("/dev/zero does not read zeros");
	fd = openat(fds[5].fd, "inner.txt", O_RDONLY);
	memset(buf, 0, sizeof(buf));
	if (fd < 0 || read(fd, buf, sizeof(buf)) != 14 || memcmp(buf, "inner content\n", 14))
		zdtm_fail("openat(dirfd, \"inner.txt\") did not find the file");
	zdtm_pass_or_fail();
}

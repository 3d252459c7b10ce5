/*
 * files_regular: open regular files - descriptors, offsets, flags, sharing.
 *
 *   rw   "rw.dat"     O_RDWR, 10000 bytes of pattern, offset 1234
 *   42   dup2(rw, 42) same open file description as rw (shared offset)
 *   app  "append.log" O_WRONLY|O_APPEND, 500 bytes written (offset 500)
 *   ro   "ro.dat"     O_RDONLY|O_NONBLOCK, 3000 bytes, offset 777,
 *                     FD_CLOEXEC
 * On SIGTERM: each fd number still refers to the same file (st_dev and
 * st_ino equal those of the path), the offsets, F_GETFL flags and
 * FD_CLOEXEC flags are unchanged, the contents are intact, reading
 * continues at the saved offset, rw and 42 still share one offset, and a
 * write to the append fd lands at the end of the file.  append.log is then
 * cut back to its 500 bytes: a copy restored from the same images (after
 * --leave-running, or a second restore) finds it as it was at READY.
 */
#include "zdtm.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NFD 4
static struct f {
	const char *name;	/* descriptive name */
	const char *path;
	int fd;
	size_t size;
	uint64_t seed;
	off_t off;
	int flags, fdflags;
} f[NFD] = {
	{ "rw", "rw.dat", -1, 10000, 11, 1234, 0, 0 },
	{ "fd 42", "rw.dat", 42, 10000, 11, 1234, 0, 0 },
	{ "append", "append.log", -1, 500, 12, 500, 0, 0 },
	{ "ro", "ro.dat", -1, 3000, 13, 777, 0, 0 },
};

static int create(const char *path, size_t size, uint64_t seed, int oflags)
{
	static char buf[10000];
	int fd = open(path, oflags | O_CREAT | O_TRUNC, 0644);

	if (fd < 0)
		zdtm_die("open %s: %m", path);
	zdtm_fill(buf, size, seed);
	if (write(fd, buf, size) != (ssize_t)size)
		zdtm_die("write %s: %m", path);
	return fd;
}

int main(int argc, char **argv)
{
	static char buf[10000];
	struct stat st, pst;
	int rofd;

	zdtm_init(argc, argv);
	f[0].fd = create("rw.dat", 10000, 11, O_RDWR);
	if (dup2(f[0].fd, 42) != 42)
		zdtm_die("dup2: %m");
	lseek(f[0].fd, 1234, SEEK_SET);
	f[2].fd = create("append.log", 500, 12, O_WRONLY | O_APPEND);
	rofd = create("ro.dat", 3000, 13, O_WRONLY);
	close(rofd);
	f[3].fd = open("ro.dat", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (f[3].fd < 0 || lseek(f[3].fd, 777, SEEK_SET) != 777)
		zdtm_die("ro.dat: %m");
	for (int i = 0; i < NFD; i++) {
		f[i].flags = fcntl(f[i].fd, F_GETFL);
		f[i].fdflags = fcntl(f[i].fd, F_GETFD);
	}
	if ((f[2].flags & (O_ACCMODE | O_APPEND)) != (O_WRONLY | O_APPEND) ||
	    !(f[3].fdflags & FD_CLOEXEC) || (f[0].fdflags & FD_CLOEXEC))
		zdtm_die("unexpected flags before READY");

	zdtm_ready();
	zdtm_wait_check();

	for (int i = 0; i < NFD; i++) {
		off_t off = lseek(f[i].fd, 0, SEEK_CUR);
		int flags = fcntl(f[i].fd, F_GETFL), fdflags = fcntl(f[i].fd, F_GETFD);

		if (fstat(f[i].fd, &st) || stat(f[i].path, &pst)) {
			zdtm_fail("%s: fd %d: fstat/stat: %m", f[i].name, f[i].fd);
			continue;
		}
		if (st.st_dev != pst.st_dev || st.st_ino != pst.st_ino)
			zdtm_fail("%s: fd %d is not %s", f[i].name, f[i].fd, f[i].path);
		if (st.st_size != (off_t)f[i].size)
			zdtm_fail("%s: size %lld, expected %zu", f[i].name, (long long)st.st_size,
				  f[i].size);
		if (off != f[i].off)
			zdtm_fail("%s: offset %lld, expected %lld", f[i].name, (long long)off,
				  (long long)f[i].off);
		if (flags != f[i].flags)
			zdtm_fail("%s: F_GETFL %#o, expected %#o", f[i].name, flags, f[i].flags);
		if (fdflags != f[i].fdflags)
			zdtm_fail("%s: F_GETFD %#x, expected %#x", f[i].name, fdflags, f[i].fdflags);
	}

	/* contents: the readable fds (rw, ro) continue reading at their offset */
	for (int i = 0; i < NFD; i += 3) {
		size_t n = f[i].size - f[i].off;

		if (read(f[i].fd, buf, n) != (ssize_t)n)
			zdtm_fail("%s: short read: %m", f[i].name);
		for (size_t j = 0; j < n; j++)
			if ((uint8_t)buf[j] != zdtm_pattern_byte(f[i].seed, f[i].off + j)) {
				zdtm_fail("%s: byte %lld differs", f[i].name, (long long)(f[i].off + j));
				break;
			}
	}
	/* rw and 42 share one open file description */
	if (lseek(f[1].fd, 0, SEEK_CUR) != 10000)
		zdtm_fail("fd 42 does not share the offset of fd %d", f[0].fd);
	lseek(f[0].fd, 100, SEEK_SET);
	if (lseek(f[1].fd, 0, SEEK_CUR) != 100)
		zdtm_fail("fd 42 does not share the offset of fd %d", f[0].fd);
	/* O_APPEND: writes go to the end even after seeking back */
	lseek(f[2].fd, 0, SEEK_SET);
	if (write(f[2].fd, "XYZ", 3) != 3)
		zdtm_fail("write to the append fd: %m");
	int app = open("append.log", O_RDONLY);
	if (app < 0 || read(app, buf, 600) != 503 || memcmp(buf + 500, "XYZ", 3) ||
	    zdtm_check(buf, 500, 12) != 500)
		zdtm_fail("append.log does not have the appended data at its end");
	close(app);
	if (ftruncate(f[2].fd, 500))
		zdtm_fail("ftruncate append.log back to 500 bytes: %m");
	zdtm_pass_or_fail();
}

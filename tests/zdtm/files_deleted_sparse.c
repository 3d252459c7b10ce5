/*
 * files_deleted_sparse: a 1 GiB sparse file deleted while open.
 *
 * "sparse.dat" is 1 GiB long with three data extents (4 KiB at 0, 64 KiB
 * at 300 MiB, 8 KiB at 700 MiB) and holes everywhere else, the last one
 * reaching the end of the file.  It is owned by 4321:4322 with mode 0640,
 * has fixed access and modification times, is positioned at 12345 and is
 * unlinked.  On SIGTERM the fd must still be a deleted file with the same
 * size, mode, owner, times (checked before anything reads it), offset,
 * contents, the same data extents and holes (SEEK_DATA/SEEK_HOLE), and
 * almost no blocks allocated.
 */
#include "zdtm.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIB (1024LL * 1024)
#define SIZE (1024 * MIB)

static const struct {
	long long off, len;
} ext[] = { { 0, 4096 }, { 300 * MIB, 64 * 1024 }, { 700 * MIB, 8192 } };
#define NEXT (sizeof(ext) / sizeof(ext[0]))

static char buf[64 * 1024];

int main(int argc, char **argv)
{
	struct timespec ts[2] = { { 1500000000, 123456789 }, { 1600000000, 987654321 } };
	long long at;
	struct stat st;
	unsigned i;
	int fd;

	zdtm_init(argc, argv);
	fd = open("sparse.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		zdtm_die("open: %m");
	for (i = 0; i < NEXT; i++) {
		zdtm_fill(buf, ext[i].len, 40 + i);
		if (pwrite(fd, buf, ext[i].len, ext[i].off) != ext[i].len)
			zdtm_die("pwrite: %m");
	}
	if (ftruncate(fd, SIZE) || fchown(fd, 4321, 4322) || fchmod(fd, 0640))
		zdtm_die("ftruncate/fchown/fchmod: %m");
	if (lseek(fd, 12345, SEEK_SET) != 12345 || unlink("sparse.dat"))
		zdtm_die("lseek/unlink: %m");
	if (futimens(fd, ts))
		zdtm_die("futimens: %m");

	zdtm_ready();
	zdtm_wait_check();

	if (fstat(fd, &st))
		zdtm_die("fstat: %m");
	if (st.st_atim.tv_sec != ts[0].tv_sec || st.st_atim.tv_nsec != ts[0].tv_nsec)
		zdtm_fail("atime %lld.%09ld, expected %lld.%09ld", (long long)st.st_atim.tv_sec,
			  st.st_atim.tv_nsec, (long long)ts[0].tv_sec, ts[0].tv_nsec);
	if (st.st_mtim.tv_sec != ts[1].tv_sec || st.st_mtim.tv_nsec != ts[1].tv_nsec)
		zdtm_fail("mtime %lld.%09ld, expected %lld.%09ld", (long long)st.st_mtim.tv_sec,
			  st.st_mtim.tv_nsec, (long long)ts[1].tv_sec, ts[1].tv_nsec);
	if (st.st_nlink != 0)
		zdtm_fail("st_nlink = %ld, expected 0", (long)st.st_nlink);
	if (st.st_size != SIZE)
		zdtm_fail("size %lld, expected %lld", (long long)st.st_size, SIZE);
	if ((st.st_mode & 07777) != 0640)
		zdtm_fail("mode %#o, expected 0640", st.st_mode & 07777);
	if (st.st_uid != 4321 || st.st_gid != 4322)
		zdtm_fail("owner %d:%d, expected 4321:4322", (int)st.st_uid, (int)st.st_gid);
	if ((long long)st.st_blocks * 512 > 4 * MIB)
		zdtm_fail("%lld bytes allocated, the holes were filled",
			  (long long)st.st_blocks * 512);
	if (lseek(fd, 0, SEEK_CUR) != 12345)
		zdtm_fail("offset %lld, expected 12345", (long long)lseek(fd, 0, SEEK_CUR));
	for (i = 0, at = 0; i < NEXT; i++) {
		long long d = lseek(fd, at, SEEK_DATA), h;

		if (d != ext[i].off)
			zdtm_fail("SEEK_DATA from %lld: %lld, expected %lld", at, d, ext[i].off);
		h = lseek(fd, ext[i].off, SEEK_HOLE);
		if (h != ext[i].off + ext[i].len)
			zdtm_fail("SEEK_HOLE from %lld: %lld, expected %lld", ext[i].off, h,
				  ext[i].off + ext[i].len);
		at = ext[i].off + ext[i].len;
		memset(buf, 0, sizeof(buf));
		if (pread(fd, buf, ext[i].len, ext[i].off) != ext[i].len ||
		    zdtm_check(buf, ext[i].len, 40 + i) != (size_t)ext[i].len)
			zdtm_fail("extent %u differs", i);
	}
	if (lseek(fd, at, SEEK_DATA) != -1)
		zdtm_fail("data after the last extent");
	if (pread(fd, buf, 4096, 500 * MIB) != 4096 || zdtm_check_zero(buf, 4096) != 4096)
		zdtm_fail("a hole does not read as zeros");
	zdtm_pass_or_fail();
}

/*
 * files_times: restoring does not change the files a process has open or
 * mapped.
 *
 * Four files get fixed access and modification times (in 2020, so that
 * any access would update the access time under relatime): "ro.dat" open
 * read-only, "rw.dat" open read-write at an offset, "priv.dat" mapped
 * MAP_PRIVATE (one page rewritten, its fd closed) and "shared.dat" mapped
 * MAP_SHARED read-only (its fd closed).  On SIGTERM, before touching them:
 * every file's atime, mtime and size are exactly as at READY.
 */
#include "zdtm.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIZE (32 * 1024)
#define N 4

static const char *names[N] = { "ro.dat", "rw.dat", "priv.dat", "shared.dat" };

int main(int argc, char **argv)
{
	static char buf[SIZE];
	struct timespec ts[2] = { { 1580000000, 111111111 }, { 1590000000, 222222222 } };
	struct stat st[N], now;
	char *priv, *shared;
	int fd[N], i;

	zdtm_init(argc, argv);
	zdtm_fill(buf, SIZE, 71);
	for (i = 0; i < N; i++) {
		fd[i] = open(names[i], O_RDWR | O_CREAT | O_TRUNC, 0644);
		if (fd[i] < 0 || write(fd[i], buf, SIZE) != SIZE)
			zdtm_die("create %s: %m", names[i]);
	}
	priv = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd[2], 0);
	shared = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, fd[3], 0);
	if (priv == MAP_FAILED || shared == MAP_FAILED)
		zdtm_die("mmap: %m");
	memset(priv, 0x33, 4096);
	if (shared[100] != buf[100])
		zdtm_die("shared mapping content");
	close(fd[2]);
	close(fd[3]);
	close(fd[0]);
	fd[0] = open(names[0], O_RDONLY);
	if (fd[0] < 0 || lseek(fd[1], 1000, SEEK_SET) != 1000)
		zdtm_die("reopen/lseek: %m");
	for (i = 0; i < N; i++)
		if (utimensat(AT_FDCWD, names[i], ts, 0) || stat(names[i], &st[i]))
			zdtm_die("utimensat/stat %s: %m", names[i]);

	zdtm_ready();
	zdtm_wait_check();

	for (i = 0; i < N; i++) {
		if (stat(names[i], &now))
			zdtm_die("stat %s: %m", names[i]);
		if (now.st_atim.tv_sec != st[i].st_atim.tv_sec ||
		    now.st_atim.tv_nsec != st[i].st_atim.tv_nsec)
			zdtm_fail("%s: atime %lld.%09ld, expected %lld.%09ld", names[i],
				  (long long)now.st_atim.tv_sec, now.st_atim.tv_nsec,
				  (long long)st[i].st_atim.tv_sec, st[i].st_atim.tv_nsec);
		if (now.st_mtim.tv_sec != st[i].st_mtim.tv_sec ||
		    now.st_mtim.tv_nsec != st[i].st_mtim.tv_nsec)
			zdtm_fail("%s: mtime %lld.%09ld, expected %lld.%09ld", names[i],
				  (long long)now.st_mtim.tv_sec, now.st_mtim.tv_nsec,
				  (long long)st[i].st_mtim.tv_sec, st[i].st_mtim.tv_nsec);
		if (now.st_size != SIZE)
			zdtm_fail("%s: size %lld, expected %d", names[i], (long long)now.st_size,
				  SIZE);
	}
	if (lseek(fd[1], 0, SEEK_CUR) != 1000)
		zdtm_fail("rw.dat: offset %lld", (long long)lseek(fd[1], 0, SEEK_CUR));
	if (priv[0] != 0x33 || priv[4096] != buf[4096] || shared[200] != buf[200])
		zdtm_fail("mapping contents differ");
	zdtm_pass_or_fail();
}

/* A program run from a memfd (fexecve): the test copies its own executable
 * into a memfd named "zdtm-exe", makes it read-only (a write-sealed memfd
 * reopened O_RDONLY, the writable descriptor closed: execve refuses a file
 * open for writing) and executes it. Its exe link is then
 * "/memfd:zdtm-exe (deleted)". After the restore the link must be the same,
 * the exe must be the very file its code is mapped from (same inode as the
 * mapping of main), with the same contents (hash), and no fd is left open. */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static uint64_t hash_fd(int fd)
{
	char buf[65536];
	uint64_t h = 0;
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		h = zdtm_hash(buf, (size_t)n, h);
	return h;
}

static void run_from_memfd(char **argv)
{
	int src = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	int mfd = memfd_create("zdtm-exe", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (src < 0 || mfd < 0)
		zdtm_die("open exe / memfd_create: %m");
	char buf[65536];
	ssize_t n;
	while ((n = read(src, buf, sizeof(buf))) > 0)
		if (write(mfd, buf, (size_t)n) != n)
			zdtm_die("write memfd: %m");
	close(src);
	if (fcntl(mfd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL))
		zdtm_die("F_ADD_SEALS: %m");
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	if (ro < 0)
		zdtm_die("reopen memfd: %m");
	close(mfd);
	setenv("ZDTM_EXE_MEMFD", "1", 1);
	fexecve(ro, argv, environ);
	zdtm_die("fexecve: %m");
}

static char link_before[256];
static uint64_t hash_before;

static int exe_state(char *link, size_t size, uint64_t *hash, int report)
{
	ssize_t n = readlink("/proc/self/exe", link, size - 1);
	if (n < 0) {
		zdtm_fail("readlink /proc/self/exe: %m");
		return -1;
	}
	link[n] = 0;
	int fd = open("/proc/self/exe", O_RDONLY);
	if (fd < 0) {
		zdtm_fail("open /proc/self/exe: %m");
		return -1;
	}
	struct stat st;
	fstat(fd, &st);
	*hash = hash_fd(fd);
	close(fd);
	struct zdtm_vma v;
	if (zdtm_find_vma((void *)&exe_state, &v)) {
		zdtm_fail("no mapping of the code");
		return -1;
	}
	char maps[65536];
	ssize_t m = zdtm_read_file("/proc/self/maps", maps, sizeof(maps) - 1);
	if (m <= 0) {
		zdtm_fail("read maps");
		return -1;
	}
	maps[m] = 0;
	/* The line of the code mapping: "start-end perms offset dev inode name". */
	char start[32];
	snprintf(start, sizeof(start), "%lx-", (unsigned long)v.start);
	char *line = strstr(maps, start);
	unsigned long ino = 0;
	if (!line || sscanf(line, "%*s %*s %*s %*s %lu", &ino) != 1)
		zdtm_fail("cannot parse the code mapping's line");
	else if (ino != (unsigned long)st.st_ino && report)
		zdtm_fail("exe inode %lu, code mapped from inode %lu", (unsigned long)st.st_ino, ino);
	return 0;
}

int main(int argc, char **argv)
{
	if (!getenv("ZDTM_EXE_MEMFD"))
		run_from_memfd(argv);
	zdtm_init(argc, argv);
	if (exe_state(link_before, sizeof(link_before), &hash_before, 1))
		zdtm_die("setup");
	if (strcmp(link_before, "/memfd:zdtm-exe (deleted)"))
		zdtm_die("exe link is %s", link_before);
	zdtm_ready();
	zdtm_wait_check();

	char link[256];
	uint64_t hash;
	if (exe_state(link, sizeof(link), &hash, 1) == 0) {
		if (strcmp(link, link_before))
			zdtm_fail("exe link %s, was %s", link, link_before);
		if (hash != hash_before)
			zdtm_fail("exe contents changed");
	}
	for (int fd = 3; fd < 64; fd++)
		if (fcntl(fd, F_GETFD) >= 0)
			zdtm_fail("fd %d is open", fd);
	zdtm_pass_or_fail();
}

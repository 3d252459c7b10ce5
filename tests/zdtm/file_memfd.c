/*
 * file_memfd: memfds, open and mapped.
 *
 *   A  "zdtm memfd", MFD_ALLOW_SEALING: 3 MiB + 123 bytes, sparse (1 MiB of
 *      pattern, a 1 MiB hole, 100 KiB of pattern near the end), offset
 *      12345, sealed F_SEAL_SHRINK | F_SEAL_GROW, and a MAP_SHARED read-write
 *      mapping of it whose first page was written through the mapping
 *   B  "sealed": "hello", F_SEAL_WRITE | F_SEAL_SEAL, O_APPEND; and BR, a
 *      read-only reopen of B through /proc/self/fd (another description)
 *   C  "plain", created without MFD_ALLOW_SEALING: 8 KiB of pattern, also
 *      at fd 80 (dup), and MAP_PRIVATE with its second page changed (COW)
 *   D  "mapped only": 64 KiB of pattern, MAP_SHARED, then its fd closed
 *   E  "noexec", MFD_NOEXEC_SEAL
 * On SIGTERM: links, sizes, contents, offsets, flags, seals, modes; A is
 * still sparse; writes through A's mapping show in the file and back; the
 * seals still refuse what they refuse; C cannot be sealed; C's private
 * mapping has its changed page and the file is unchanged; D's mapping holds
 * its data and is backed by a memfd with that name and data.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

/* memfds are always opened with O_LARGEFILE, which glibc defines as 0 on x86-64 */
#define K_O_LARGEFILE 0100000
#define MiB (1024 * 1024)
#define A_SIZE (3 * MiB + 123)
#define A_TAIL_OFF (2 * MiB + 4096)
#define A_TAIL (100 * 1024)
#define C_SIZE 8192
#define D_SIZE (64 * 1024)

static uint8_t buf[A_SIZE], head[1024 * 1024];

static void check_link(const char *name, int fd, const char *want)
{
	char path[64], l[300];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, l, sizeof(l) - 1);
	l[n > 0 ? n : 0] = 0;
	if (strcmp(l, want))
		zdtm_fail("%s: fd %d is %s, expected %s", name, fd, l, want);
}

static void check_seals(const char *name, int fd, int want)
{
	int got = fcntl(fd, F_GET_SEALS);

	if (got != want)
		zdtm_fail("%s: seals %#x, expected %#x", name, got, want);
}

static void check_pattern(const char *name, const uint8_t *p, size_t len, uint64_t seed)
{
	size_t at = zdtm_check(p, len, seed);

	if (at != len)
		zdtm_fail("%s: data differs at offset %zu", name, at);
}

int main(int argc, char **argv)
{
	int a, b, br, c, d, e;
	uint8_t *am, *cm, *dm;
	char path[64];
	struct stat st;

	zdtm_init(argc, argv);
	a = memfd_create("zdtm memfd", MFD_ALLOW_SEALING);
	b = memfd_create("sealed", MFD_ALLOW_SEALING | MFD_CLOEXEC);
	c = memfd_create("plain", 0);
	d = memfd_create("mapped only", MFD_CLOEXEC);
	e = memfd_create("noexec", MFD_NOEXEC_SEAL);
	if (a < 0 || b < 0 || c < 0 || d < 0 || e < 0)
		zdtm_die("memfd_create: %m");

	/* A */
	if (ftruncate(a, A_SIZE))
		zdtm_die("ftruncate: %m");
	zdtm_fill(buf, MiB, 1);
	zdtm_fill(buf + A_TAIL_OFF, A_TAIL, 2);
	if (pwrite(a, buf, MiB, 0) != MiB || pwrite(a, buf + A_TAIL_OFF, A_TAIL, A_TAIL_OFF) != A_TAIL)
		zdtm_die("pwrite A: %m");
	if (lseek(a, 12345, SEEK_SET) != 12345)
		zdtm_die("lseek: %m");
	if (fcntl(a, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW))
		zdtm_die("F_ADD_SEALS A: %m");
	am = mmap(NULL, 2 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
	if (am == MAP_FAILED)
		zdtm_die("mmap A: %m");
	zdtm_fill(am, 4096, 3);

	/* B and BR */
	if (write(b, "hello", 5) != 5 || fcntl(b, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) ||
	    fcntl(b, F_SETFL, O_APPEND))
		zdtm_die("B: %m");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", b);
	br = open(path, O_RDONLY);
	if (br < 0)
		zdtm_die("reopen B: %m");

	/* C */
	zdtm_fill(buf, C_SIZE, 4);
	if (write(c, buf, C_SIZE) != C_SIZE || dup2(c, 80) != 80)
		zdtm_die("C: %m");
	cm = mmap(NULL, C_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, c, 0);
	if (cm == MAP_FAILED)
		zdtm_die("mmap C: %m");
	zdtm_fill(cm + 4096, 4096, 5);

	/* D */
	if (ftruncate(d, D_SIZE))
		zdtm_die("ftruncate D: %m");
	dm = mmap(NULL, D_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, d, 0);
	if (dm == MAP_FAILED)
		zdtm_die("mmap D: %m");
	zdtm_fill(dm, D_SIZE, 6);
	close(d);

	zdtm_ready();
	zdtm_wait_check();

	check_link("A", a, "/memfd:zdtm memfd (deleted)");
	check_link("B", b, "/memfd:sealed (deleted)");
	check_link("BR", br, "/memfd:sealed (deleted)");
	check_link("C", c, "/memfd:plain (deleted)");
	check_link("C dup", 80, "/memfd:plain (deleted)");
	check_link("E", e, "/memfd:noexec (deleted)");

	/* A: size, offset, seals, contents, sparseness, sharing with the mapping */
	if (fstat(a, &st) || st.st_size != A_SIZE)
		zdtm_fail("A: size %lld, expected %d", (long long)st.st_size, A_SIZE);
	if ((long long)st.st_blocks * 512 > A_SIZE - MiB / 2)
		zdtm_fail("A: %lld bytes allocated, the hole was filled",
			  (long long)st.st_blocks * 512);
	if (lseek(a, 0, SEEK_CUR) != 12345)
		zdtm_fail("A: offset %lld, expected 12345", (long long)lseek(a, 0, SEEK_CUR));
	check_seals("A", a, F_SEAL_SHRINK | F_SEAL_GROW);
	if ((fcntl(a, F_GETFL) & O_ACCMODE) != O_RDWR || fcntl(a, F_GETFD) != 0)
		zdtm_fail("A: F_GETFL %#o F_GETFD %d", fcntl(a, F_GETFL), fcntl(a, F_GETFD));
	if (pread(a, buf, A_SIZE, 0) != A_SIZE)
		zdtm_fail("A: pread: %m");
	check_pattern("A page 0 (written through the mapping)", buf, 4096, 3);
	zdtm_fill(head, MiB, 1);
	if (memcmp(buf + 4096, head + 4096, MiB - 4096))
		zdtm_fail("A: the first MiB differs");
	if (zdtm_check_zero(buf + MiB, A_TAIL_OFF - MiB) != A_TAIL_OFF - MiB)
		zdtm_fail("A: the hole is not zero");
	check_pattern("A tail", buf + A_TAIL_OFF, A_TAIL, 2);
	if (zdtm_check_zero(buf + A_TAIL_OFF + A_TAIL, A_SIZE - A_TAIL_OFF - A_TAIL) !=
	    (size_t)(A_SIZE - A_TAIL_OFF - A_TAIL))
		zdtm_fail("A: the end is not zero");
	if (memcmp(am, buf, 2 * MiB))
		zdtm_fail("A: the mapping differs from the file");
	am[100] ^= 0xff;
	if (pread(a, buf, 1, 100) != 1 || buf[0] != am[100])
		zdtm_fail("A: a write through the mapping does not reach the file");
	buf[0] = 0x5a;
	if (pwrite(a, buf, 1, 200) != 1 || am[200] != 0x5a)
		zdtm_fail("A: a write to the file does not show in the mapping");
	if (ftruncate(a, A_SIZE + 1) != -1 || errno != EPERM)
		zdtm_fail("A: F_SEAL_GROW does not hold");

	/* B, BR */
	check_seals("B", b, F_SEAL_WRITE | F_SEAL_SEAL);
	if (fcntl(b, F_GETFL) != (O_RDWR | O_APPEND | K_O_LARGEFILE) || fcntl(b, F_GETFD) != FD_CLOEXEC)
		zdtm_fail("B: F_GETFL %#o F_GETFD %d", fcntl(b, F_GETFL), fcntl(b, F_GETFD));
	if (fcntl(br, F_GETFL) != (O_RDONLY | K_O_LARGEFILE))
		zdtm_fail("BR: F_GETFL %#o, expected O_RDONLY|O_LARGEFILE", fcntl(br, F_GETFL));
	{
		struct stat sb, sbr;

		if (fstat(b, &sb) || fstat(br, &sbr) || sb.st_ino != sbr.st_ino || sb.st_size != 5)
			zdtm_fail("B and BR are not one memfd of 5 bytes");
	}
	memset(buf, 0, 8);
	if (pread(br, buf, 8, 0) != 5 || memcmp(buf, "hello", 5))
		zdtm_fail("BR: contents differ");
	if (lseek(br, 0, SEEK_CUR) != 0 || lseek(b, 0, SEEK_CUR) != 5)
		zdtm_fail("B/BR: offsets %lld/%lld, expected 5/0", (long long)lseek(b, 0, SEEK_CUR),
			  (long long)lseek(br, 0, SEEK_CUR));
	if (write(b, "x", 1) != -1 || errno != EPERM)
		zdtm_fail("B: F_SEAL_WRITE does not hold");
	if (fcntl(b, F_ADD_SEALS, F_SEAL_GROW) != -1 || errno != EPERM)
		zdtm_fail("B: F_SEAL_SEAL does not hold");

	/* C */
	check_seals("C", c, F_SEAL_SEAL);
	if (fcntl(c, F_ADD_SEALS, F_SEAL_WRITE) != -1)
		zdtm_fail("C: could be sealed");
	if (pread(80, buf, C_SIZE + 1, 0) != C_SIZE)
		zdtm_fail("C: size differs");
	check_pattern("C file", buf, C_SIZE, 4);
	if (lseek(c, 0, SEEK_CUR) != C_SIZE || lseek(80, 0, SEEK_CUR) != C_SIZE)
		zdtm_fail("C: offset not shared with fd 80 or not %d", C_SIZE);
	check_pattern("C private mapping, page 0", cm, 4096, 4);
	check_pattern("C private mapping, page 1", cm + 4096, 4096, 5);

	/* D: only mapped */
	check_pattern("D mapping", dm, D_SIZE, 6);
	{
		struct zdtm_vma v;
		int fd;

		if (zdtm_find_vma(dm, &v) || strcmp(v.name, "/memfd:mapped only (deleted)") ||
		    strcmp(v.perms, "rw-s"))
			zdtm_fail("D: mapping is %s %s", v.perms, v.name);
		snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", v.start, v.end);
		fd = open(path, O_RDONLY);
		if (fd < 0 || pread(fd, buf, D_SIZE + 1, 0) != D_SIZE)
			zdtm_fail("D: the memfd behind the mapping cannot be read or has another size");
		else
			check_pattern("D file", buf, D_SIZE, 6);
	}

	/* E */
	check_seals("E", e, F_SEAL_EXEC);
	if (fstat(e, &st) || (st.st_mode & 07777) != 0666)
		zdtm_fail("E: mode %#o, expected 0666", st.st_mode & 07777);
	zdtm_pass_or_fail();
}

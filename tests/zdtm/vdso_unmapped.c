/* A process that unmapped its vDSO and vvar ([vdso], [vvar], [vvar_vclock]):
 * stasis must run its system calls through another syscall instruction and
 * restore it without them. After the restore none of them is mapped again,
 * raw system calls work (clock_gettime through syscall(2): glibc's own would
 * jump into the unmapped vdso), and 1 MiB of patterned memory is intact. */
#include "zdtm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { LEN = 1 << 20 };

/* Unmaps every mapping whose name is in names; returns how many. */
static int unmap_named(void)
{
	char maps[65536];
	ssize_t n = zdtm_read_file("/proc/self/maps", maps, sizeof(maps) - 1);
	if (n <= 0)
		zdtm_die("read maps");
	maps[n] = 0;
	unsigned long starts[8], ends[8];
	int count = 0;
	for (char *line = maps; line && *line && count < 8;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		if (strstr(line, "[vdso]") || strstr(line, "[vvar]") || strstr(line, "[vvar_vclock]")) {
			if (sscanf(line, "%lx-%lx", &starts[count], &ends[count]) == 2)
				count++;
		}
		line = nl ? nl + 1 : NULL;
	}
	for (int i = 0; i < count; i++)
		if (syscall(SYS_munmap, starts[i], ends[i] - starts[i]))
			zdtm_die("munmap");
	return count;
}

static int specials_left(void)
{
	char maps[65536];
	ssize_t n = zdtm_read_file("/proc/self/maps", maps, sizeof(maps) - 1);
	if (n <= 0)
		return -1;
	maps[n] = 0;
	return strstr(maps, "[vdso]") || strstr(maps, "[vvar]") || strstr(maps, "[vvar_vclock]");
}

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	char *mem = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		zdtm_die("mmap");
	zdtm_fill(mem, LEN, 77);
	if (unmap_named() < 1)
		zdtm_die("no vdso to unmap");
	if (specials_left())
		zdtm_die("the vdso is still mapped");
	zdtm_ready();
	zdtm_wait_check();

	if (specials_left())
		zdtm_fail("a [vdso] or [vvar] is mapped again");
	struct timespec ts;
	if (syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts) || ts.tv_sec <= 0)
		zdtm_fail("clock_gettime through syscall(2)");
	if (syscall(SYS_getpid) != getpid())
		zdtm_fail("getpid");
	size_t at = zdtm_check(mem, LEN, 77);
	if (at != LEN)
		zdtm_fail("memory differs at offset %zu", at);
	zdtm_pass_or_fail();
}

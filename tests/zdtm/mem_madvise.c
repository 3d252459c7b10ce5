/*
 * mem_madvise: what madvise, mlock and mseal leave on a mapping (VmFlags in /proc/self/smaps)
 * must come back on the same ranges, with the contents intact.
 *
 * Private anonymous mappings, each with one setting, separated by PROT_NONE gaps:
 *   dc MADV_DONTFORK, dd MADV_DONTDUMP, hg MADV_HUGEPAGE, nh MADV_NOHUGEPAGE,
 *   wf MADV_WIPEONFORK, sr MADV_SEQUENTIAL, rr MADV_RANDOM, mg MADV_MERGEABLE,
 *   lo mlock, lo+lf mlock2(MLOCK_ONFAULT) (one page of four touched), sl mseal;
 * one mapping split in two (MADV_DONTDUMP on its first half, mlock on its second);
 * a read-only private mapping of a file, mlocked: it must stay the file's pages (no anonymous
 * copies in smaps), which a restore that locked it while it was still writable would break.
 * Last, mlockall(MCL_FUTURE): a mapping made after the restore must be locked too.
 *
 * Checked: each mapping starts where it did, has exactly its flags among those above, and
 * holds its pattern.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096UL
#define NPAGES 4
#define SYS_mseal_nr 462

/* Flags this test is about; every mapping must have exactly its own among them. */
static const char *const advice_flags[] = { "dc", "dd", "hg", "nh", "wf", "sr",
					    "rr", "mg", "lo", "lf", "sl" };
#define NFLAGS (sizeof(advice_flags) / sizeof(advice_flags[0]))

struct region {
	const char *name;
	char *addr;
	size_t len;
	const char *flags;	/* expected, space separated */
	unsigned touched;	/* pages filled with the pattern (the rest never touched) */
};

static int has_token(const char *list, const char *tok)
{
	size_t n = strlen(tok);
	for (const char *p = list; (p = strstr(p, tok)); p += n)
		if ((p == list || p[-1] == ' ') && (p[n] == 0 || p[n] == ' ' || p[n] == '\n'))
			return 1;
	return 0;
}

static void check_flags(const char *name, const void *addr, const char *want)
{
	char got[512];
	if (zdtm_vma_flags(addr, got, sizeof(got))) {
		zdtm_fail("%s: no mapping starts at %p any more", name, addr);
		return;
	}
	for (size_t i = 0; i < NFLAGS; i++) {
		int g = has_token(got, advice_flags[i]), w = has_token(want, advice_flags[i]);
		if (g != w)
			zdtm_fail("%s at %p: VmFlags %s '%s' (VmFlags: %s)", name, addr,
				  g ? "has an unexpected" : "lacks", advice_flags[i], got);
	}
}

/* The "Anonymous:" size in kB of the smaps entry starting at addr, or -1. */
static long anon_kb(const void *addr)
{
	static char buf[1 << 20];
	ssize_t len = zdtm_read_file("/proc/self/smaps", buf, sizeof(buf) - 1);
	if (len < 0)
		return -1;
	buf[len] = 0;
	int in = 0;
	for (char *line = buf, *nl; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			break;
		*nl = 0;
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2)
			in = s == (unsigned long)addr;
		else if (in && !strncmp(line, "Anonymous:", 10))
			return strtol(line + 10, NULL, 10);
	}
	return -1;
}

static void *map_at(char *at, size_t len, int prot, int flags, int fd)
{
	void *p = mmap(at, len, prot, flags | MAP_FIXED, fd, 0);
	if (p == MAP_FAILED)
		zdtm_die("mmap at %p: %s", (void *)at, strerror(errno));
	return p;
}

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	struct region r[] = {
		{ "dontfork", 0, NPAGES * PAGE, "dc", NPAGES },
		{ "dontdump", 0, NPAGES * PAGE, "dd", NPAGES },
		{ "hugepage", 0, NPAGES * PAGE, "hg", NPAGES },
		{ "nohugepage", 0, NPAGES * PAGE, "nh", NPAGES },
		{ "wipeonfork", 0, NPAGES * PAGE, "wf", NPAGES },
		{ "sequential", 0, NPAGES * PAGE, "sr", NPAGES },
		{ "random", 0, NPAGES * PAGE, "rr", NPAGES },
		{ "mergeable", 0, NPAGES * PAGE, "mg", NPAGES },
		{ "mlock", 0, NPAGES * PAGE, "lo", NPAGES },
		{ "mlock-onfault", 0, NPAGES * PAGE, "lo lf", 1 },
		{ "mseal", 0, NPAGES * PAGE, "sl", NPAGES },
		{ "split-dontdump", 0, NPAGES * PAGE, "dd", NPAGES },
		{ "split-mlock", 0, NPAGES * PAGE, "lo", NPAGES },
	};
	size_t n = sizeof(r) / sizeof(r[0]);
	/* One reservation, every region at a fixed place in it with a PROT_NONE page between. */
	size_t total = (n + 2) * (NPAGES + 1) * PAGE;
	char *base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		zdtm_die("mmap: %s", strerror(errno));
	char *at = base + PAGE;
	for (size_t i = 0; i < n; i++) {
		/* The split mapping is one mmap: its second half follows its first directly. */
		if (!strcmp(r[i].name, "split-mlock")) {
			r[i].addr = r[i - 1].addr + r[i - 1].len;
			continue;
		}
		size_t len = r[i].len;
		if (!strcmp(r[i].name, "split-dontdump"))
			len *= 2;
		r[i].addr = map_at(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
		at += len + PAGE;
	}
	for (size_t i = 0; i < n; i++)
		zdtm_fill(r[i].addr, r[i].touched * PAGE, 100 + i);
	struct {
		const char *name;
		int advice;
	} adv[] = {
		{ "dontfork", MADV_DONTFORK }, { "dontdump", MADV_DONTDUMP },
		{ "hugepage", MADV_HUGEPAGE }, { "nohugepage", MADV_NOHUGEPAGE },
		{ "wipeonfork", MADV_WIPEONFORK }, { "sequential", MADV_SEQUENTIAL },
		{ "random", MADV_RANDOM }, { "mergeable", MADV_MERGEABLE },
		{ "split-dontdump", MADV_DONTDUMP },
	};
	for (size_t a = 0; a < sizeof(adv) / sizeof(adv[0]); a++)
		for (size_t i = 0; i < n; i++)
			if (!strcmp(r[i].name, adv[a].name) &&
			    madvise(r[i].addr, r[i].len, adv[a].advice))
				zdtm_die("madvise %s: %s", r[i].name, strerror(errno));
	for (size_t i = 0; i < n; i++) {
		if (!strcmp(r[i].name, "mlock") || !strcmp(r[i].name, "split-mlock")) {
			if (mlock(r[i].addr, r[i].len))
				zdtm_die("mlock %s: %s", r[i].name, strerror(errno));
		} else if (!strcmp(r[i].name, "mlock-onfault")) {
			if (mlock2(r[i].addr, r[i].len, MLOCK_ONFAULT))
				zdtm_die("mlock2: %s", strerror(errno));
		} else if (!strcmp(r[i].name, "mseal")) {
			if (syscall(SYS_mseal_nr, r[i].addr, r[i].len, 0))
				zdtm_die("mseal: %s", strerror(errno));
		}
	}

	/* A read-only private file mapping, locked. */
	static char data[NPAGES * PAGE];
	zdtm_fill(data, sizeof(data), 7);
	int fd = open("mapped.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, data, sizeof(data)) != (ssize_t)sizeof(data))
		zdtm_die("mapped.dat: %s", strerror(errno));
	char *file = map_at(at, sizeof(data), PROT_READ, MAP_PRIVATE, fd);
	close(fd);
	if (mlock(file, sizeof(data)))
		zdtm_die("mlock file: %s", strerror(errno));
	if (mlockall(MCL_FUTURE))
		zdtm_die("mlockall: %s", strerror(errno));

	for (size_t i = 0; i < n; i++)
		check_flags(r[i].name, r[i].addr, r[i].flags);
	check_flags("file", file, "lo");
	if (zdtm_failed())
		zdtm_die("the setup does not show the flags it set");
	zdtm_ready();

	zdtm_wait_check();

	for (size_t i = 0; i < n; i++) {
		check_flags(r[i].name, r[i].addr, r[i].flags);
		size_t len = r[i].touched * PAGE;
		if (zdtm_check(r[i].addr, len, 100 + i) != len)
			zdtm_fail("%s: contents differ", r[i].name);
		size_t rest = r[i].len - len;
		if (rest && zdtm_check_zero(r[i].addr + len, rest) != rest)
			zdtm_fail("%s: untouched pages are not zero", r[i].name);
	}
	check_flags("file", file, "lo");
	if (zdtm_check(file, sizeof(data), 7) != sizeof(data))
		zdtm_fail("file mapping: contents differ");
	long anon = anon_kb(file);
	if (anon != 0)
		zdtm_fail("the locked read-only file mapping has %ld kB of anonymous copies", anon);
	char *later = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (later == MAP_FAILED)
		zdtm_fail("mmap after restore: %s", strerror(errno));
	else
		check_flags("new mapping (mlockall MCL_FUTURE)", later, "lo");
	zdtm_pass_or_fail();
}

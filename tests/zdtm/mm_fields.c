/*
 * mm_fields: per-process memory-descriptor fields and identity.
 *
 * Before READY the test renames itself (PR_SET_NAME "zdtm-renamed") and
 * adds ADDR_NO_RANDOMIZE to its personality, then saves:
 * /proc/self/cmdline, /proc/self/environ and /proc/self/auxv (raw bytes),
 * the /proc/self/exe link, /proc/self/comm and PR_GET_NAME, the
 * personality, and the /proc/self/stat fields 26-28 (startcode, endcode,
 * startstack) and 45-51 (start_data, end_data, start_brk, arg_start,
 * arg_end, env_start, env_end).  All must be equal after restore.
 */
#include "zdtm.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <unistd.h>

#define BUFSZ 65536
static const int stat_fields[] = { 26, 27, 28, 45, 46, 47, 48, 49, 50, 51 };
#define NSTAT (sizeof(stat_fields) / sizeof(stat_fields[0]))
static const char *files[] = { "/proc/self/cmdline", "/proc/self/environ",
			       "/proc/self/auxv", "/proc/self/comm" };
#define NFILES 4

struct snap {
	char file[NFILES][BUFSZ];
	ssize_t len[NFILES];
	char exe[PATH_MAX];
	char name[17];
	int persona;
	unsigned long long stat[NSTAT];
};
static struct snap before, after;

static void take(struct snap *s)
{
	static char buf[4096];
	char *p, *save;
	ssize_t n;

	for (int i = 0; i < NFILES; i++)
		s->len[i] = zdtm_read_file(files[i], s->file[i], BUFSZ);
	n = readlink("/proc/self/exe", s->exe, sizeof(s->exe) - 1);
	s->exe[n < 0 ? 0 : n] = 0;
	memset(s->name, 0, sizeof(s->name));
	prctl(PR_GET_NAME, s->name, 0, 0, 0);
	s->persona = personality(0xffffffff);

	n = zdtm_read_file("/proc/self/stat", buf, sizeof(buf) - 1);
	buf[n < 0 ? 0 : n] = 0;
	p = strrchr(buf, ')');	/* field 2 (comm) may contain spaces */
	memset(s->stat, 0, sizeof(s->stat));
	if (!p)
		return;
	p += 2;			/* now at field 3 */
	for (int field = 3, k = 0; k < (int)NSTAT; field++) {
		char *tok = strtok_r(p, " ", &save);

		p = NULL;
		if (!tok)
			break;
		if (field == stat_fields[k])
			s->stat[k++] = strtoull(tok, NULL, 10);
	}
}

int main(int argc, char **argv)
{
	int persona;

	zdtm_init(argc, argv);
	if (prctl(PR_SET_NAME, "zdtm-renamed", 0, 0, 0))
		zdtm_die("PR_SET_NAME: %m");
	persona = personality(0xffffffff);
	if (personality(persona | ADDR_NO_RANDOMIZE) < 0)
		zdtm_die("personality: %m");
	take(&before);
	for (int i = 0; i < NFILES; i++)
		if (before.len[i] <= 0)
			zdtm_die("cannot read %s", files[i]);
	if (strcmp(before.name, "zdtm-renamed") || strcmp(before.file[3], "zdtm-renamed\n"))
		zdtm_die("rename did not work: %s", before.name);
	if (before.persona != (persona | ADDR_NO_RANDOMIZE))
		zdtm_die("personality %#x", before.persona);
	if (!before.stat[0] || !before.stat[2] || !before.stat[6])
		zdtm_die("could not parse /proc/self/stat");

	zdtm_ready();
	zdtm_wait_check();

	take(&after);
	for (int i = 0; i < NFILES; i++)
		if (after.len[i] != before.len[i] ||
		    memcmp(after.file[i], before.file[i], before.len[i]))
			zdtm_fail("%s differs (%zd bytes, was %zd)", files[i], after.len[i],
				  before.len[i]);
	if (strcmp(after.exe, before.exe))
		zdtm_fail("/proc/self/exe -> \"%s\", was \"%s\"", after.exe, before.exe);
	if (strcmp(after.name, before.name))
		zdtm_fail("PR_GET_NAME \"%s\", was \"%s\"", after.name, before.name);
	if (after.persona != before.persona)
		zdtm_fail("personality %#x, was %#x", after.persona, before.persona);
	for (unsigned k = 0; k < NSTAT; k++)
		if (after.stat[k] != before.stat[k])
			zdtm_fail("/proc/self/stat field %d = %#llx, was %#llx", stat_fields[k],
				  after.stat[k], before.stat[k]);
	zdtm_pass_or_fail();
}

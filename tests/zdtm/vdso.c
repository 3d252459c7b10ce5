/*
 * vdso: the vDSO (and its vvar data pages) after restore.
 *
 * Before READY the addresses of [vdso], [vvar] and [vvar_vclock] are
 * saved.  After READY the test spins calling clock_gettime(MONOTONIC and
 * REALTIME), gettimeofday() and time() (all served by the vDSO) and, now
 * and then, the real clock_gettime system call.  It records any error,
 * any backwards step of CLOCK_MONOTONIC, and any disagreement between
 * the vDSO clocks and the kernel (a vDSO reading stale vvar data would
 * return a frozen or wrong time).  On SIGTERM the same checks are done
 * once more and the special mappings must still be at the same addresses.
 */
#include "zdtm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *special[] = { "[vdso]", "[vvar]", "[vvar_vclock]" };
#define NSPECIAL 3

static int64_t ts_ns(const struct timespec *t)
{
	return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

static struct {
	long iterations, errors, backwards, time_mismatch, tod_mismatch, kernel_mismatch;
	char first[256];
} st;

static void bad(long *counter, const char *what, int64_t a, int64_t b)
{
	if (!st.first[0])
		snprintf(st.first, sizeof(st.first), "%s (%lld vs %lld)", what,
			 (long long)a, (long long)b);
	(*counter)++;
}

static int64_t prev_mono;

/* one round of clock reads and consistency checks */
static void sample(int with_syscall)
{
	struct timespec m, r, k;
	struct timeval tv;
	time_t t;

	if (clock_gettime(CLOCK_MONOTONIC, &m) || clock_gettime(CLOCK_REALTIME, &r) ||
	    gettimeofday(&tv, NULL)) {
		st.errors++;
		return;
	}
	t = time(NULL);
	if (ts_ns(&m) < prev_mono)
		bad(&st.backwards, "CLOCK_MONOTONIC went backwards", ts_ns(&m), prev_mono);
	prev_mono = ts_ns(&m);
	/* CLOCK_REALTIME may be stepped (NTP): compare it with 1 s tolerance */
	if (t < r.tv_sec - 1 || t > r.tv_sec + 1)
		bad(&st.time_mismatch, "time() vs CLOCK_REALTIME", t, r.tv_sec);
	if (llabs((int64_t)tv.tv_sec * 1000000 + tv.tv_usec - ts_ns(&r) / 1000) > 1000000)
		bad(&st.tod_mismatch, "gettimeofday vs CLOCK_REALTIME",
		    (int64_t)tv.tv_sec * 1000000 + tv.tv_usec, ts_ns(&r) / 1000);
	if (with_syscall) {
		/* the kernel's clock, read after the vDSO's: must be >= and close */
		if (syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &k))
			st.errors++;
		else if (ts_ns(&k) < ts_ns(&m) || ts_ns(&k) > ts_ns(&m) + 1000000000LL)
			bad(&st.kernel_mismatch, "vDSO CLOCK_MONOTONIC vs syscall", ts_ns(&m),
			    ts_ns(&k));
		if (syscall(SYS_clock_gettime, CLOCK_REALTIME, &k))
			st.errors++;
		else if (llabs(ts_ns(&k) - ts_ns(&r)) > 1000000000LL)
			bad(&st.kernel_mismatch, "vDSO CLOCK_REALTIME vs syscall", ts_ns(&r),
			    ts_ns(&k));
	}
	st.iterations++;
}

int main(int argc, char **argv)
{
	struct zdtm_vma before[NSPECIAL], after;
	int present[NSPECIAL];

	zdtm_init(argc, argv);
	for (int i = 0; i < NSPECIAL; i++)
		present[i] = zdtm_find_vma_by_name(special[i], &before[i]) == 0;
	if (!present[0])
		zdtm_die("no [vdso] in /proc/self/maps");
	if (getauxval(AT_SYSINFO_EHDR) != before[0].start)
		zdtm_die("AT_SYSINFO_EHDR %#lx != [vdso] %#lx", getauxval(AT_SYSINFO_EHDR),
			 before[0].start);
	sample(1);

	zdtm_ready();
	while (!zdtm_stop)
		sample(st.iterations % 256 == 0);

	for (int i = 0; i < 100; i++)
		sample(1);
	if (st.errors)
		zdtm_fail("%ld clock calls failed", st.errors);
	if (st.backwards || st.time_mismatch || st.tod_mismatch || st.kernel_mismatch)
		zdtm_fail("%ld samples: %ld monotonic steps backwards, %ld time() mismatches, "
			  "%ld gettimeofday mismatches, %ld vDSO/kernel mismatches; first: %s",
			  st.iterations, st.backwards, st.time_mismatch, st.tod_mismatch,
			  st.kernel_mismatch, st.first);

	for (int i = 0; i < NSPECIAL; i++) {
		if (!present[i])
			continue;
		if (zdtm_find_vma_by_name(special[i], &after))
			zdtm_fail("%s is gone", special[i]);
		else if (after.start != before[i].start || after.end != before[i].end ||
			 strcmp(after.perms, before[i].perms))
			zdtm_fail("%s moved: %lx-%lx %s, was %lx-%lx %s", special[i], after.start,
				  after.end, after.perms, before[i].start, before[i].end,
				  before[i].perms);
	}
	zdtm_pass_or_fail();
}

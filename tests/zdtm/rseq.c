/*
 * rseq: the restartable-sequences registration that glibc makes for the
 * main thread at startup.
 *
 * The rseq area lives in the TCB at __builtin_thread_pointer() +
 * __rseq_offset, registered with signature RSEQ_SIG.  The registered
 * length is not always __rseq_size (Debian's glibc 2.36 exports the
 * feature size 20 but registers 32 bytes), so before READY the length
 * that the kernel reports as "already registered" (EBUSY) is found.  On
 * SIGTERM the registration must still exist with the same address,
 * length and signature: registering the same area again must fail with
 * EBUSY (a different area/length gives EINVAL, a different signature
 * EPERM, no registration at all succeeds).  It must also be
 * live: after the cpu_id/cpu_id_start fields are overwritten with a bogus
 * value, the kernel must rewrite them with a valid CPU number when it
 * delivers a signal (or reschedules).  If glibc did not register rseq
 * (__rseq_size == 0) there is nothing to check and the test passes.
 */
#include "zdtm.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BOGUS_CPU 0x7ffffff0u

static void on_usr1(int sig) { (void)sig; }

/* try to register the area again; returns the errno (0 = it succeeded) */
static int reregister(struct rseq *rs, unsigned int len)
{
	if (syscall(SYS_rseq, rs, len, 0, RSEQ_SIG) == 0)
		return 0;
	return errno;
}

int main(int argc, char **argv)
{
	struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	long ncpus = sysconf(_SC_NPROCESSORS_CONF);
	struct sigaction sa = { .sa_handler = on_usr1 };
	uint32_t flags_before;
	unsigned int len = 0;
	int e = 0;

	zdtm_init(argc, argv);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	if (__rseq_size == 0) {
		zdtm_ready();
		zdtm_wait_check();
		zdtm_print("# rseq is not registered by glibc (__rseq_size == 0), nothing checked");
		zdtm_pass_or_fail();
	}
	/* find the registered length: a wrong one gives EINVAL, no side effects */
	const unsigned int lens[] = { __rseq_size, 32, 64, 128, 256 };
	for (unsigned int i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		len = lens[i];
		e = reregister(rs, len);
		if (e != EINVAL)
			break;
	}
	if (e != EBUSY)
		zdtm_die("before READY: re-registering rseq gave errno %d (%s), expected EBUSY",
			 e, strerror(e));
	if (rs->cpu_id >= ncpus)
		zdtm_die("before READY: rseq cpu_id %u", rs->cpu_id);
	flags_before = rs->flags;

	zdtm_ready();
	zdtm_wait_check();

	e = reregister(rs, len);
	if (e == 0)
		zdtm_fail("rseq area %p is not registered after restore (registering it again succeeded)",
			  (void *)rs);
	else if (e != EBUSY)
		zdtm_fail("re-registering rseq area %p (len %u, sig %#x) gave %s, expected EBUSY "
			  "(registered with another address/length/signature?)",
			  (void *)rs, len, RSEQ_SIG, strerror(e));
	if (rs->rseq_cs != 0)
		zdtm_fail("rseq_cs = %#llx, expected 0", (unsigned long long)rs->rseq_cs);
	if (rs->flags != flags_before)
		zdtm_fail("rseq flags = %#x, expected %#x", rs->flags, flags_before);

	/* the kernel must keep the area up to date */
	rs->cpu_id = BOGUS_CPU;
	rs->cpu_id_start = BOGUS_CPU;
	sched_yield();
	raise(SIGUSR1);
	if (rs->cpu_id >= ncpus || rs->cpu_id_start >= ncpus)
		zdtm_fail("kernel did not update the rseq area: cpu_id %#x cpu_id_start %#x "
			  "(%ld cpus)", rs->cpu_id, rs->cpu_id_start, ncpus);
	zdtm_pass_or_fail();
}

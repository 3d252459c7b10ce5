/*
 * signals: signal dispositions, blocked mask, alternate stack and pending
 * signals (standard and queued real-time).
 *
 *   SIGUSR1     handler, SA_SIGINFO|SA_RESTART, sa_mask {SIGUSR2}
 *   SIGUSR2     handler, SA_NODEFER, sa_mask {SIGHUP, SIGQUIT}
 *   SIGHUP      handler, SA_ONSTACK|SA_RESETHAND (sigaltstack is set up)
 *   SIGRTMIN+3  handler, SA_SIGINFO, sa_mask {SIGUSR1, SIGRTMIN+5}
 *   SIGPIPE     ignored
 *   blocked:    SIGUSR1, SIGRTMIN+3
 *   pending:    SIGUSR1 via raise() (thread-directed, SI_TKILL), and
 *               SIGRTMIN+3 queued twice with sigqueue() (process-directed,
 *               SI_QUEUE) with the values 1234 and 5678 - both instances
 *               must survive, in order, with their values.
 * On SIGTERM: every sigaction (handler, flags except SA_RESTORER, mask),
 * the blocked mask, the alternate stack and the pending set must be
 * unchanged and no handler may have run yet.  Then the signals are
 * unblocked and the handlers must run with the right siginfo; the flags
 * are exercised: the masks seen inside handlers, SA_NODEFER, SA_ONSTACK
 * (handler runs on the alternate stack), SA_RESETHAND (disposition reset
 * to SIG_DFL after delivery), and SIGPIPE really being ignored.
 */
#include "zdtm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000	/* set by glibc on every sigaction() */
#endif
#define RTSIG (SIGRTMIN + 3)
#define NSIGS 5
static int sigs[NSIGS];
static struct sigaction saved[NSIGS];
static char altstack[65536];

static volatile sig_atomic_t n_usr1, n_usr2, n_hup, n_rt;
static volatile int usr1_code, usr1_pid, rt_code[4], rt_pid[4], rt_val[4];
static volatile int bad_mask;		/* bit per handler that saw a wrong mask */
static volatile int hup_on_stack;

static int blocked(int sig)
{
	sigset_t cur;

	sigprocmask(SIG_BLOCK, NULL, &cur);
	return sigismember(&cur, sig);
}

static void h_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)uc;
	usr1_code = si->si_code;
	usr1_pid = si->si_pid;
	if (!blocked(SIGUSR1) || !blocked(SIGUSR2))
		bad_mask |= 1;
	n_usr1++;
}

static void h_usr2(int sig)
{
	(void)sig;
	if (blocked(SIGUSR2) || !blocked(SIGHUP) || !blocked(SIGQUIT))
		bad_mask |= 2;
	n_usr2++;
}

static void h_hup(int sig)
{
	char local;
	stack_t ss;

	(void)sig;
	sigaltstack(NULL, &ss);
	hup_on_stack = &local >= altstack && &local < altstack + sizeof(altstack) &&
		       (ss.ss_flags & SS_ONSTACK);
	n_hup++;
}

static void h_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)uc;
	if (n_rt < 4) {
		rt_code[n_rt] = si->si_code;
		rt_pid[n_rt] = si->si_pid;
		rt_val[n_rt] = si->si_value.sival_int;
	}
	if (!blocked(RTSIG) || !blocked(SIGUSR1) || !blocked(SIGRTMIN + 5))
		bad_mask |= 4;
	n_rt++;
}

static void set(int i, int sig, void *handler, int flags, int m1, int m2)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	if (flags & SA_SIGINFO)
		sa.sa_sigaction = handler;
	else
		sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (m1)
		sigaddset(&sa.sa_mask, m1);
	if (m2)
		sigaddset(&sa.sa_mask, m2);
	if (sigaction(sig, &sa, NULL))
		zdtm_die("sigaction(%d): %m", sig);
	sigs[i] = sig;
	memset(&saved[i], 0, sizeof(saved[i]));
	sigaction(sig, NULL, &saved[i]);
}

/* compare two sets over all signal numbers; returns first differing sig or 0 */
static int setdiff(const sigset_t *a, const sigset_t *b)
{
	for (int s = 1; s <= SIGRTMAX; s++)
		if (sigismember(a, s) != sigismember(b, s))
			return s;
	return 0;
}

int main(int argc, char **argv)
{
	sigset_t block, mask_before, mask, pend, want_pend;
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0 }, ss2;
	union sigval v;
	int pfd[2], d;

	zdtm_init(argc, argv);
	if (sigaltstack(&ss, NULL))
		zdtm_die("sigaltstack: %m");
	set(0, SIGUSR1, h_usr1, SA_SIGINFO | SA_RESTART, SIGUSR2, 0);
	set(1, SIGUSR2, h_usr2, SA_NODEFER, SIGHUP, SIGQUIT);
	set(2, SIGHUP, h_hup, SA_ONSTACK | SA_RESETHAND, 0, 0);
	set(3, RTSIG, h_rt, SA_SIGINFO, SIGUSR1, SIGRTMIN + 5);
	set(4, SIGPIPE, SIG_IGN, 0, 0, 0);

	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, RTSIG);
	sigprocmask(SIG_BLOCK, &block, NULL);
	sigprocmask(SIG_BLOCK, NULL, &mask_before);
	raise(SIGUSR1);
	v.sival_int = 1234;
	if (sigqueue(getpid(), RTSIG, v))
		zdtm_die("sigqueue: %m");
	v.sival_int = 5678;
	if (sigqueue(getpid(), RTSIG, v))
		zdtm_die("sigqueue: %m");
	want_pend = block;
	sigpending(&pend);
	if (setdiff(&pend, &want_pend))
		zdtm_die("pending set before READY is wrong");

	zdtm_ready();
	zdtm_wait_check();

	/* dispositions */
	for (int i = 0; i < NSIGS; i++) {
		struct sigaction cur;
		int fa, fb;

		memset(&cur, 0, sizeof(cur));
		sigaction(sigs[i], NULL, &cur);
		fa = cur.sa_flags & ~SA_RESTORER;
		fb = saved[i].sa_flags & ~SA_RESTORER;
		if (cur.sa_handler != saved[i].sa_handler)
			zdtm_fail("signal %d: handler %p, expected %p", sigs[i],
				  (void *)cur.sa_handler, (void *)saved[i].sa_handler);
		if (fa != fb)
			zdtm_fail("signal %d: sa_flags %#x, expected %#x", sigs[i], fa, fb);
		if ((d = setdiff(&cur.sa_mask, &saved[i].sa_mask)))
			zdtm_fail("signal %d: sa_mask differs at signal %d", sigs[i], d);
	}
	/* blocked mask, alternate stack, pending signals */
	sigprocmask(SIG_BLOCK, NULL, &mask);
	if ((d = setdiff(&mask, &mask_before)))
		zdtm_fail("blocked mask differs at signal %d", d);
	if (sigaltstack(NULL, &ss2))
		zdtm_fail("sigaltstack: %m");
	else if (ss2.ss_sp != ss.ss_sp || ss2.ss_size != ss.ss_size || ss2.ss_flags != 0)
		zdtm_fail("sigaltstack sp %p size %zu flags %#x, expected %p %zu 0", ss2.ss_sp,
			  ss2.ss_size, ss2.ss_flags, ss.ss_sp, ss.ss_size);
	sigpending(&pend);
	if ((d = setdiff(&pend, &want_pend)))
		zdtm_fail("pending set differs at signal %d (%s)", d,
			  sigismember(&pend, d) ? "unexpectedly pending" : "lost");
	if (n_usr1 || n_usr2 || n_hup || n_rt)
		zdtm_fail("handlers ran while their signals were blocked");

	/* deliver the pending signals */
	sigprocmask(SIG_UNBLOCK, &block, NULL);
	if (n_usr1 != 1 || usr1_code != SI_TKILL || usr1_pid != getpid())
		zdtm_fail("SIGUSR1: delivered %d times, si_code %d si_pid %d (expected 1, %d, %d)",
			  n_usr1, usr1_code, usr1_pid, SI_TKILL, getpid());
	if (n_rt != 2)
		zdtm_fail("SIGRTMIN+3 delivered %d times, expected 2", n_rt);
	for (int i = 0; i < 2 && i < n_rt; i++)
		if (rt_val[i] != (i ? 5678 : 1234) || rt_code[i] != SI_QUEUE || rt_pid[i] != getpid())
			zdtm_fail("SIGRTMIN+3 #%d: value %d si_code %d si_pid %d, expected %d %d %d",
				  i + 1, rt_val[i], rt_code[i], rt_pid[i], i ? 5678 : 1234, SI_QUEUE,
				  getpid());
	sigpending(&pend);
	if (sigismember(&pend, SIGUSR1) || sigismember(&pend, RTSIG))
		zdtm_fail("signals still pending after unblocking");

	/* exercise the flags */
	raise(SIGUSR2);
	raise(SIGHUP);
	if (n_usr2 != 1 || n_hup != 1)
		zdtm_fail("SIGUSR2/SIGHUP handlers ran %d/%d times", n_usr2, n_hup);
	if (bad_mask)
		zdtm_fail("wrong blocked mask inside handlers (%s%s%s)", bad_mask & 1 ? "SIGUSR1 " : "",
			  bad_mask & 2 ? "SIGUSR2 (SA_NODEFER/sa_mask) " : "",
			  bad_mask & 4 ? "SIGRTMIN+3" : "");
	if (!hup_on_stack)
		zdtm_fail("SIGHUP handler did not run on the alternate stack");
	struct sigaction cur;
	sigaction(SIGHUP, NULL, &cur);
	if (cur.sa_handler != SIG_DFL)
		zdtm_fail("SA_RESETHAND: SIGHUP disposition not reset after delivery");
	if (pipe(pfd) == 0) {
		close(pfd[0]);
		if (write(pfd[1], "x", 1) != -1 || errno != EPIPE)	/* SIGPIPE ignored */
			zdtm_fail("write to a broken pipe did not fail with EPIPE");
		close(pfd[1]);
	}
	zdtm_pass_or_fail();
}

/*
 * epoll_closed_fd: epoll watches whose registering fd was closed (the file kept open by a
 * dup), or closed and reused for another file.
 *
 *   pipe A: read end registered as fd a, dup'ed to a2, a closed
 *   pipe B: read end registered as fd b, dup'ed to b2, b closed, then an eventfd put at b
 * On SIGTERM: writes to A and B wake the epoll with each watch's data; EPOLL_CTL_DEL of the
 * old numbers through the new files fails with ENOENT (the kernel knows the watches by
 * (file, old number)); EPOLL_CTL_MOD through a2 under number a (dup2 a2 -> a) works.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int pa[2], pb[2], ep, a, b, a2, b2, n, i, seen_a = 0, seen_b = 0;
	struct epoll_event ev, evs[4];

	zdtm_init(argc, argv);
	if (pipe(pa) || pipe(pb))
		zdtm_die("pipe");
	ep = epoll_create1(EPOLL_CLOEXEC);
	a = pa[0];
	b = pb[0];
	ev.events = EPOLLIN;
	ev.data.u64 = 0xaaaa;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, a, &ev))
		zdtm_die("ctl a");
	ev.data.u64 = 0xbbbb;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev))
		zdtm_die("ctl b");
	a2 = dup(a);
	b2 = dup(b);
	close(a);
	close(b);
	n = eventfd(0, 0);
	if (n < 0 || dup3(n, b, O_CLOEXEC) != b)
		zdtm_die("eventfd at %d", b);
	close(n);
	zdtm_ready();
	zdtm_wait_check();

	if (fcntl(b, F_GETFD) != FD_CLOEXEC)
		zdtm_fail("fd %d lost its close-on-exec flag", b);
	if (fcntl(a, F_GETFD) != -1 || errno != EBADF)
		zdtm_fail("fd %d is open", a);
	if (write(pa[1], "x", 1) != 1 || write(pb[1], "y", 1) != 1)
		zdtm_fail("write");
	n = epoll_wait(ep, evs, 4, 2000);
	for (i = 0; i < n; i++) {
		if (evs[i].data.u64 == 0xaaaa)
			seen_a++;
		else if (evs[i].data.u64 == 0xbbbb)
			seen_b++;
		else
			zdtm_fail("unknown event data %llx", (unsigned long long)evs[i].data.u64);
	}
	if (n != 2 || seen_a != 1 || seen_b != 1)
		zdtm_fail("epoll_wait: %d events (a %d, b %d)", n, seen_a, seen_b);
	/* The watch of B is known as (pipe B, number b): the eventfd at b is not watched. */
	if (epoll_ctl(ep, EPOLL_CTL_DEL, b, NULL) != -1 || errno != ENOENT)
		zdtm_fail("EPOLL_CTL_DEL of the eventfd at %d: %m", b);
	/* Put pipe A back at number a: the watch is found again. */
	if (dup2(a2, a) != a)
		zdtm_fail("dup2");
	ev.events = EPOLLIN;
	ev.data.u64 = 0xcccc;
	if (epoll_ctl(ep, EPOLL_CTL_MOD, a, &ev))
		zdtm_fail("EPOLL_CTL_MOD of pipe A at %d: %m", a);
	(void)b2;
	zdtm_pass_or_fail();
}

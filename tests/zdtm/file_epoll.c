/*
 * file_epoll: an epoll instance and the files it watches.
 *
 *   EP watches, with these data values:
 *     pipe P read end (1 byte in the pipe)   EPOLLIN            0x1111222233334444
 *     pipe P write end                        EPOLLOUT           0xaa
 *     eventfd E (counter 5)                   EPOLLIN|EPOLLET    0xe0e0
 *     eventfd Z (counter 0)                   EPOLLIN            0x2020
 *     Z again, through its dup at fd 60       EPOLLOUT           0x6060
 *     pipe Q read end (empty)                 EPOLLIN|ONESHOT    0x7070
 *     epoll EP2, which watches E              EPOLLIN            0x5050
 *   EP is also at fd 70 (dup: one description).
 * Nothing calls epoll_wait before the check. On SIGTERM: epoll_wait on EP
 * reports exactly {P-in, P-out, E, Z-via-60, EP2} with their data and
 * events; again without E (edge-triggered, no new edge); after a write to
 * Z the 0x2020 watch shows up; after a write to Q the one-shot 0x7070 watch
 * fires once and never again; fd 70 is the same epoll (a watch added
 * through it shows on EP); EP2 reports E with data 0xe2.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct want {
	uint64_t data;
	uint32_t events;
};

static void add(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };

	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		zdtm_die("epoll_ctl(ADD %d): %m", fd);
}

/* epoll_wait(ep) must report exactly the watches in w[0..n) */
static void expect(const char *when, int ep, const struct want *w, int n)
{
	struct epoll_event ev[16];
	int got = epoll_wait(ep, ev, 16, 0), seen[16] = { 0 };

	if (got < 0) {
		zdtm_fail("%s: epoll_wait: %m", when);
		return;
	}
	for (int i = 0; i < got; i++) {
		int j;

		for (j = 0; j < n; j++)
			if (w[j].data == ev[i].data.u64)
				break;
		if (j == n) {
			zdtm_fail("%s: unexpected event %#x with data %#llx", when, ev[i].events,
				  (unsigned long long)ev[i].data.u64);
			continue;
		}
		seen[j]++;
		if (ev[i].events != w[j].events)
			zdtm_fail("%s: data %#llx came with events %#x, expected %#x", when,
				  (unsigned long long)w[j].data, ev[i].events, w[j].events);
	}
	for (int j = 0; j < n; j++)
		if (seen[j] != 1)
			zdtm_fail("%s: data %#llx reported %d times, expected once", when,
				  (unsigned long long)w[j].data, seen[j]);
}

int main(int argc, char **argv)
{
	int p[2], q[2], e, z, ep, ep2, extra;
	uint64_t v = 5;

	zdtm_init(argc, argv);
	if (pipe(p) || pipe(q))
		zdtm_die("pipe: %m");
	e = eventfd(0, EFD_NONBLOCK);
	z = eventfd(0, EFD_NONBLOCK);
	ep = epoll_create1(0);
	ep2 = epoll_create1(EPOLL_CLOEXEC);
	if (e < 0 || z < 0 || ep < 0 || ep2 < 0)
		zdtm_die("eventfd/epoll_create1: %m");
	if (write(p[1], "x", 1) != 1 || write(e, &v, 8) != 8)
		zdtm_die("write: %m");
	if (dup2(z, 60) != 60 || dup2(ep, 70) != 70)
		zdtm_die("dup2: %m");
	add(ep, p[0], EPOLLIN, 0x1111222233334444ULL);
	add(ep, p[1], EPOLLOUT, 0xaa);
	add(ep, e, EPOLLIN | EPOLLET, 0xe0e0);
	add(ep, z, EPOLLIN, 0x2020);
	add(ep, 60, EPOLLOUT, 0x6060);
	add(ep, q[0], EPOLLIN | EPOLLONESHOT, 0x7070);
	add(ep2, e, EPOLLIN, 0xe2);
	add(ep, ep2, EPOLLIN, 0x5050);

	zdtm_ready();
	zdtm_wait_check();

	{
		struct want w[] = {
			{ 0x1111222233334444ULL, EPOLLIN }, { 0xaa, EPOLLOUT }, { 0xe0e0, EPOLLIN },
			{ 0x6060, EPOLLOUT }, { 0x5050, EPOLLIN },
		};
		struct want no_e[] = { w[0], w[1], w[3], w[4] };

		expect("first wait", ep, w, 5);
		expect("second wait (edge-triggered E must not repeat)", ep, no_e, 4);
	}
	v = 1;
	if (write(z, &v, 8) != 8 || write(q[1], "y", 1) != 1)
		zdtm_fail("write: %m");
	{
		struct want w[] = {
			{ 0x1111222233334444ULL, EPOLLIN }, { 0xaa, EPOLLOUT }, { 0x2020, EPOLLIN },
			{ 0x6060, EPOLLOUT }, { 0x5050, EPOLLIN }, { 0x7070, EPOLLIN },
		};
		expect("after writes to Z and Q", ep, w, 6);
		expect("again (the one-shot must not fire twice)", ep, w, 5);
	}
	{
		struct want w[] = { { 0xe2, EPOLLIN } };
		expect("EP2", ep2, w, 1);
	}
	/* fd 70 is the same epoll instance */
	extra = eventfd(1, 0);
	add(70, extra, EPOLLIN, 0xf00d);
	{
		struct epoll_event ev[16];
		int n = epoll_wait(ep, ev, 16, 0), found = 0;

		for (int i = 0; i < n; i++)
			found += ev[i].data.u64 == 0xf00d;
		if (found != 1)
			zdtm_fail("a watch added through fd 70 does not show on fd %d", ep);
	}
	zdtm_pass_or_fail();
}

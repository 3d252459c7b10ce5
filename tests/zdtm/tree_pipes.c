/*
 * tree_pipes: a process tree three levels deep connected by pipes that
 * always have data in flight.
 *
 *   root ─┬─ c1 ─┬─ g11
 *         │      └─ g12
 *         └─ c2 ─┬─ g21
 *                └─ g22
 *
 * Every parent/child edge has two pipes, one down and one up.  Every
 * process writes a batch of numbered 16-byte records (sender, receiver,
 * sequence number, checksum) into each of its outgoing pipes every 5 ms
 * (non-blocking, whole batches only), and reads its incoming pipes only
 * down to LAG bytes, so every pipe keeps at least LAG bytes unread while
 * the tree runs: a dump always finds data in flight, in pipes whose ends
 * belong to different processes.
 *
 * On SIGTERM the root forwards SIGTERM to its children, which forward it
 * to theirs.  A process that got SIGTERM writes an END record (carrying
 * the number of records it sent) into each outgoing pipe and closes it,
 * then reads its incoming pipes to EOF.  Every reader checks that records
 * come from the right peer, in sequence, with no loss, duplicate,
 * reordering or corruption, that END carries the count it received and
 * that nothing follows END.  Every process also checks its pid and
 * parent pid (except the root's parent), reaps its children (exit status 0 expected) and exits with
 * its verdict; the root prints PASS or FAIL.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define NPROC 7
#define LAG 4096		/* bytes a reader leaves unread while running */
#define BATCH 16		/* records per pipe per tick */
#define TICK_NS 5000000L

enum { ROOT, C1, C2, G11, G12, G21, G22 };
static const char *const names[NPROC] = { "root", "c1", "c2", "g11", "g12", "g21", "g22" };
static const int parent_of[NPROC] = { -1, ROOT, ROOT, C1, C1, C2, C2 };

enum { K_DATA = 1, K_END = 2 };

struct rec {
	uint8_t from, to, kind, pad;
	uint32_t check;
	uint64_t seq;
};

struct link {
	int peer;		/* node id */
	pid_t peer_pid;
	int rfd, wfd;
	uint64_t sent, rcvd;
	int sent_end, got_end, eof, bad;
};

static int me;
static pid_t my_pid, my_ppid;
static struct link links[3];	/* [0] is the parent's link, except in the root */
static int nlinks;

static uint32_t rec_check(const struct rec *r)
{
	return (uint32_t)zdtm_mix64(r->seq ^ ((uint64_t)r->from << 56) ^
				    ((uint64_t)r->to << 48) ^ ((uint64_t)r->kind << 40));
}

static void make_rec(struct rec *r, int to, int kind, uint64_t seq)
{
	memset(r, 0, sizeof(*r));
	r->from = me;
	r->to = to;
	r->kind = kind;
	r->seq = seq;
	r->check = rec_check(r);
}

static void node_main(void) __attribute__((noreturn));

/* Fork node `id` as a child of this process, connected by two pipes. */
static void add_child(int id)
{
	int down[2], up[2];
	pid_t pid;

	if (pipe2(down, O_CLOEXEC) || pipe2(up, O_CLOEXEC))
		zdtm_die("pipe: %m");
	pid = fork();
	if (pid < 0)
		zdtm_die("fork: %m");
	if (pid == 0) {
		for (int i = 0; i < nlinks; i++) {
			close(links[i].rfd);
			close(links[i].wfd);
		}
		close(down[1]);
		close(up[0]);
		me = id;
		zdtm_set_role(names[id]);
		nlinks = 0;
		links[nlinks++] = (struct link){ .peer = parent_of[id], .peer_pid = getppid(),
						 .rfd = down[0], .wfd = up[1] };
		node_main();
	}
	close(down[0]);
	close(up[1]);
	links[nlinks++] = (struct link){ .peer = id, .peer_pid = pid, .rfd = up[0], .wfd = down[1] };
}

static void link_fail(struct link *l, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void link_fail(struct link *l, const char *fmt, ...)
{
	char msg[200];
	va_list ap;

	if (l->bad++)
		return;		/* the first error of a link is enough */
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	zdtm_fail("pipe from %s (pid %d): %s", names[l->peer], (int)l->peer_pid, msg);
}

#define U(x) ((unsigned long long)(x))

/* Read whole records from l, leaving `keep` bytes in the pipe. */
static void receive(struct link *l, int keep)
{
	struct rec buf[256];
	int avail = 0;
	ssize_t r;
	size_t want;

	if (l->eof)
		return;
	if (keep) {
		if (ioctl(l->rfd, FIONREAD, &avail))
			zdtm_die("FIONREAD: %m");
		if (avail <= keep)
			return;
		want = (size_t)(avail - keep) / sizeof(struct rec) * sizeof(struct rec);
		if (want > sizeof(buf))
			want = sizeof(buf);
		if (!want)
			return;
	} else {
		want = sizeof(buf);
	}
	r = read(l->rfd, buf, want);
	if (r < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (r < 0) {
		link_fail(l, "read: %m");
		l->eof = 1;
		return;
	}
	if (r == 0) {
		if (!l->got_end)
			link_fail(l, "EOF without END after %llu records", U(l->rcvd));
		l->eof = 1;
		return;
	}
	if (r % sizeof(struct rec))
		link_fail(l, "read %zd bytes, not whole records (after %llu)", r, U(l->rcvd));
	for (size_t i = 0; i < (size_t)r / sizeof(struct rec); i++) {
		struct rec *x = &buf[i];

		if (x->check != rec_check(x) || x->from != l->peer || x->to != me) {
			link_fail(l, "corrupt record (from %d to %d, seq field %llu) after %llu records",
				  x->from, x->to, U(x->seq), U(l->rcvd));
			continue;
		}
		if (l->got_end) {
			link_fail(l, "record %llu after END (at %llu)", U(x->seq), U(l->rcvd));
			continue;
		}
		if (x->kind == K_END) {
			l->got_end = 1;
			if (x->seq != l->rcvd)
				link_fail(l, "END says %llu records were sent, %llu arrived",
					  U(x->seq), U(l->rcvd));
			continue;
		}
		if (x->kind != K_DATA || x->seq != l->rcvd)
			link_fail(l, "record %llu (kind %d) arrived when %llu was expected",
				  U(x->seq), x->kind, U(l->rcvd));
		l->rcvd = x->seq + 1;
	}
}

static void send_batch(struct link *l)
{
	struct rec buf[BATCH];
	ssize_t w;

	if (l->sent_end)
		return;
	for (int i = 0; i < BATCH; i++)
		make_rec(&buf[i], l->peer, K_DATA, l->sent + i);
	/* O_NONBLOCK and <= PIPE_BUF bytes: all or nothing */
	w = write(l->wfd, buf, sizeof(buf));
	if (w == (ssize_t)sizeof(buf)) {
		l->sent += BATCH;
	} else if (w >= 0) {
		zdtm_fail("write to %s: %zd of %zu bytes", names[l->peer], w, sizeof(buf));
	} else if (errno != EAGAIN && errno != EINTR) {
		zdtm_fail("write to %s (pid %d): %m", names[l->peer], (int)l->peer_pid);
		l->sent_end = 1;
		close(l->wfd);
	}
}

static void send_end(struct link *l)
{
	struct rec r;
	ssize_t w;

	if (l->sent_end)
		return;
	make_rec(&r, l->peer, K_END, l->sent);
	w = write(l->wfd, &r, sizeof(r));
	if (w < 0 && (errno == EAGAIN || errno == EINTR))
		return;		/* pipe full: the reader is still draining */
	if (w != sizeof(r))
		zdtm_fail("writing END to %s (pid %d): %zd (%m)", names[l->peer],
			  (int)l->peer_pid, w);
	l->sent_end = 1;
	close(l->wfd);
}

static void tick(void)
{
	struct timespec ts = { 0, TICK_NS };

	nanosleep(&ts, NULL);	/* EINTR (SIGTERM) is fine */
}

/* Run until SIGTERM, then send END everywhere and drain to EOF. */
static void run_links(void)
{
	int64_t deadline;
	int done;

	for (int i = 0; i < nlinks; i++)
		if (fcntl(links[i].wfd, F_SETFL, O_NONBLOCK) ||
		    fcntl(links[i].rfd, F_SETFL, O_NONBLOCK))
			zdtm_die("fcntl(O_NONBLOCK): %m");

	while (!zdtm_stop) {
		for (int i = 0; i < nlinks; i++)
			receive(&links[i], LAG);
		for (int i = 0; i < nlinks; i++)
			send_batch(&links[i]);
		tick();
	}

	/* tell our children to stop too */
	for (int i = 0; i < nlinks; i++)
		if (links[i].peer > me && kill(links[i].peer_pid, SIGTERM))
			zdtm_fail("kill(%s, SIGTERM): %m", names[links[i].peer]);

	deadline = zdtm_now_ns() + 5000000000LL;
	do {
		struct pollfd pfd[3];
		int n = 0;

		for (int i = 0; i < nlinks; i++)
			send_end(&links[i]);
		for (int i = 0; i < nlinks; i++)
			if (!links[i].eof)
				pfd[n++] = (struct pollfd){ .fd = links[i].rfd, .events = POLLIN };
		if (n)
			poll(pfd, n, 5);
		done = 1;
		for (int i = 0; i < nlinks; i++) {
			receive(&links[i], 0);
			if (!links[i].eof || !links[i].sent_end)
				done = 0;
		}
		if (!done && zdtm_now_ns() > deadline) {
			for (int i = 0; i < nlinks; i++)
				if (!links[i].eof || !links[i].sent_end)
					zdtm_fail("link with %s stuck: sent_end %d, got_end %d, eof %d, %llu records in",
						  names[links[i].peer], links[i].sent_end,
						  links[i].got_end, links[i].eof, U(links[i].rcvd));
			break;
		}
	} while (!done);

	for (int i = 0; i < nlinks; i++) {
		close(links[i].rfd);
		if (!links[i].sent_end)
			close(links[i].wfd);
		if (!links[i].rcvd && !links[i].bad)
			zdtm_fail("no records at all from %s", names[links[i].peer]);
	}
}

static void check_self(void)
{
	if (getpid() != my_pid)
		zdtm_fail("getpid() %d, was %d", (int)getpid(), (int)my_pid);
	/* the root's parent is whoever restored it */
	if (me != ROOT && getppid() != my_ppid)
		zdtm_fail("getppid() %d, was %d", (int)getppid(), (int)my_ppid);
}

static void reap_children(void)
{
	for (int i = 0; i < nlinks; i++)
		if (links[i].peer > me)
			zdtm_expect_exit(links[i].peer_pid, 0, names[links[i].peer]);
}

static void node_main(void)
{
	my_pid = getpid();
	my_ppid = getppid();
	for (int id = 0; id < NPROC; id++)
		if (parent_of[id] == me && me != ROOT)
			add_child(id);
	zdtm_tree_ready(NULL, 0);
	run_links();
	reap_children();
	check_self();
	zdtm_child_exit();
}

int main(int argc, char **argv)
{
	size_t n;

	zdtm_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	zdtm_tree_sync_init();
	me = ROOT;
	my_pid = getpid();
	my_ppid = getppid();
	add_child(C1);
	add_child(C2);
	n = zdtm_tree_wait(NULL, 0);
	if (n != NPROC - 1)
		zdtm_die("%zu of %d processes got ready", n, NPROC - 1);
	zdtm_ready();

	run_links();
	reap_children();
	check_self();
	zdtm_pass_or_fail();
}

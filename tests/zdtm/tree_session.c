/*
 * tree_session: sessions and process groups in a process tree.
 *
 *   root  session leader, group leader (the harness did setsid)
 *   ├─ c1   setpgid(0, 0): leads its own group in the root's session
 *   │  ├─ g1   setsid(): leads a new session (and group)
 *   │  │  └─ gg1  stays in g1's session and group
 *   │  └─ g2   stays in c1's group
 *   └─ c2   stays in the root's group
 *      └─ g3   setpgid(0, c1): joins c1's group, whose leader is not its
 *              parent
 *
 * Every process sends (pid, ppid, pgid, sid) to the root once it is set
 * up; the root checks the shape above before READY.  After SIGTERM the
 * root checks all seven processes' ppid (not its own: its parent is
 * whoever restored it), pgrp and session in
 * /proc/PID/stat and with getpgid()/getsid(); then SIGTERM travels down
 * the tree and every process checks getpid(), getppid(), getpgid(0) and
 * getsid(0) against what it had, reaps its children (exit status 0
 * expected) and exits with its verdict.
 */
#include "zdtm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { ROOT, C1, C2, G1, G2, G3, GG1, N };
static const char *const names[N] = { "root", "c1", "c2", "g1", "g2", "g3", "gg1" };

struct ids {
	int role;
	pid_t pid, ppid, pgid, sid;
};

static struct ids self;
static pid_t kids[3];
static int nkids;
static const char *kid_names[3];
static pid_t c1_pid;

static struct ids my_ids(int role)
{
	return (struct ids){ role, getpid(), getppid(), getpgid(0), getsid(0) };
}

static void check_self(void)
{
	struct ids now = my_ids(self.role);

	/* the root's parent is whoever restored it */
	if (now.pid != self.pid || (self.role != ROOT && now.ppid != self.ppid) ||
	    now.pgid != self.pgid || now.sid != self.sid)
		zdtm_fail("pid/ppid/pgid/sid %d/%d/%d/%d, were %d/%d/%d/%d", now.pid, now.ppid,
			  now.pgid, now.sid, self.pid, self.ppid, self.pgid, self.sid);
}

static void node(int role) __attribute__((noreturn));

static pid_t spawn(int role)
{
	pid_t pid = fork();

	if (pid < 0)
		zdtm_die("fork: %m");
	if (pid == 0) {
		nkids = 0;
		node(role);
	}
	kid_names[nkids] = names[role];
	kids[nkids++] = pid;
	return pid;
}

static void node(int role)
{
	zdtm_set_role(names[role]);
	switch (role) {
	case C1:
		if (setpgid(0, 0))
			zdtm_die("setpgid: %m");
		spawn(G1);
		spawn(G2);
		break;
	case C2:
		spawn(G3);
		break;
	case G1:
		if (setsid() < 0)
			zdtm_die("setsid: %m");
		spawn(GG1);
		break;
	case G3:
		if (setpgid(0, c1_pid))
			zdtm_die("setpgid(0, c1): %m");
		break;
	}
	self = my_ids(role);
	zdtm_tree_ready(&self, sizeof(self));

	zdtm_wait_check();

	for (int i = 0; i < nkids; i++)
		zdtm_stop_child(kids[i], kid_names[i]);
	check_self();
	zdtm_child_exit();
}

static char proc_stat(pid_t pid, pid_t *ppid, pid_t *pgrp, pid_t *sid)
{
	char path[64], buf[512], *p, state;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%c %d %d %d", &state, ppid, pgrp, sid) != 4)
		return 0;
	return state;
}

int main(int argc, char **argv)
{
	struct ids all[N], got[N];
	size_t n;

	zdtm_init(argc, argv);
	zdtm_tree_sync_init();
	self = my_ids(ROOT);
	if (self.sid != self.pid || self.pgid != self.pid)
		zdtm_die("the root must be a session leader (harness does setsid)");
	c1_pid = spawn(C1);
	/* make sure c1's group exists before g3 wants to join it */
	if (setpgid(c1_pid, c1_pid) && errno != EACCES)
		zdtm_die("setpgid(c1): %m");
	spawn(C2);
	n = zdtm_tree_wait(got, sizeof(got));
	if (n != (N - 1) * sizeof(struct ids))
		zdtm_die("got %zu bytes of process ids, expected %zu", n,
			 (N - 1) * sizeof(struct ids));
	memset(all, 0, sizeof(all));
	all[ROOT] = self;
	for (int i = 0; i < N - 1; i++) {
		if (got[i].role <= ROOT || got[i].role >= N || all[got[i].role].pid)
			zdtm_die("bad process record");
		all[got[i].role] = got[i];
	}
	/* the shape we wanted */
	{
		pid_t R = all[ROOT].pid, c1 = all[C1].pid, g1 = all[G1].pid;
		struct {
			int role;
			pid_t ppid, pgid, sid;
		} want[] = {
			{ C1, R, c1, R },
			{ C2, R, R, R },
			{ G1, c1, g1, g1 },
			{ G2, c1, c1, R },
			{ G3, all[C2].pid, c1, R },
			{ GG1, g1, g1, g1 },
		};
		for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
			struct ids *x = &all[want[i].role];
			if (x->ppid != want[i].ppid || x->pgid != want[i].pgid ||
			    x->sid != want[i].sid)
				zdtm_die("%s: ppid/pgid/sid %d/%d/%d, wanted %d/%d/%d",
					 names[want[i].role], x->ppid, x->pgid, x->sid,
					 want[i].ppid, want[i].pgid, want[i].sid);
		}
	}
	zdtm_ready();

	zdtm_wait_check();

	check_self();
	for (int r = 0; r < N; r++) {
		pid_t ppid = 0, pgrp = 0, sid = 0;
		char st = proc_stat(all[r].pid, &ppid, &pgrp, &sid);

		if (!st) {
			zdtm_fail("%s (pid %d) is gone", names[r], (int)all[r].pid);
			continue;
		}
		if (st == 'Z' || st == 'X')
			zdtm_fail("%s (pid %d) is a zombie", names[r], (int)all[r].pid);
		if ((r != ROOT && ppid != all[r].ppid) || pgrp != all[r].pgid || sid != all[r].sid)
			zdtm_fail("%s (pid %d): /proc says ppid/pgrp/session %d/%d/%d, expected %d/%d/%d",
				  names[r], (int)all[r].pid, ppid, pgrp, sid, all[r].ppid,
				  all[r].pgid, all[r].sid);
		if (getpgid(all[r].pid) != all[r].pgid || getsid(all[r].pid) != all[r].sid)
			zdtm_fail("%s (pid %d): getpgid %d getsid %d, expected %d %d", names[r],
				  (int)all[r].pid, getpgid(all[r].pid), getsid(all[r].pid),
				  all[r].pgid, all[r].sid);
	}
	for (int i = 0; i < nkids; i++)
		zdtm_stop_child(kids[i], kid_names[i]);
	zdtm_pass_or_fail();
}

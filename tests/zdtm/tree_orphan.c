/*
 * tree_orphan: a child subreaper and an orphan reparented to it.
 *
 * The root makes itself a child subreaper (PR_SET_CHILD_SUBREAPER).  Its
 * child c1 forks g1 and exits; the root reaps c1, and g1 is now the
 * root's child.  With argv[1] = "pgid", c1 first makes its own process
 * group, so g1 is left in a group whose leader no longer exists (what
 * a shell pipeline leaves behind); otherwise g1 is in the root's group.
 *
 * After SIGTERM the root checks that it still is a subreaper, and that
 * g1's parent (/proc/g1/stat), group and session are as before; g1
 * checks getppid() == root, getpgid(0) and getsid(0), and exits 0 when
 * the root sends it SIGTERM.  Then the root checks that the subreaper
 * still works: c2 forks g2 and exits, g2 must be reparented to the root
 * and reaped by it.
 */
#include "zdtm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct msg {
	pid_t pid, pgid, sid;
};

static pid_t root_pid;

static int proc_stat(pid_t pid, pid_t *ppid, pid_t *pgrp, pid_t *sid)
{
	char path[64], buf[512], *p, state;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%c %d %d %d", &state, ppid, pgrp, sid) != 4)
		return -1;
	return 0;
}

static void g1_main(pid_t pgid)
{
	struct msg m = { getpid(), getpgid(0), getsid(0) };

	zdtm_set_role("g1");
	if (m.pgid != pgid)
		zdtm_die("pgid %d, expected %d", m.pgid, pgid);
	zdtm_tree_ready(&m, sizeof(m));

	zdtm_wait_check();

	if (getppid() != root_pid)
		zdtm_fail("getppid() %d, expected the root (%d)", getppid(), root_pid);
	if (getpid() != m.pid || getpgid(0) != m.pgid || getsid(0) != m.sid)
		zdtm_fail("pid/pgid/sid %d/%d/%d, were %d/%d/%d", getpid(), getpgid(0), getsid(0),
			  m.pid, m.pgid, m.sid);
	zdtm_child_exit();
}

/* after restore: a fresh orphan must land at the root too */
static void check_new_orphan(void)
{
	int pfd[2], status;
	pid_t c2, g2 = 0, ppid = 0, pgrp, sid;

	if (pipe(pfd))
		zdtm_die("pipe: %m");
	c2 = fork();
	if (c2 < 0)
		zdtm_die("fork: %m");
	if (c2 == 0) {
		pid_t g = fork();

		if (g == 0) {
			struct timespec ms1 = { 0, 1000000 };

			close(pfd[0]);
			close(pfd[1]);
			for (int i = 0; i < 2000 && getppid() != root_pid; i++)
				nanosleep(&ms1, NULL);
			_exit(getppid() == root_pid ? 0 : 1);
		}
		_exit(write(pfd[1], &g, sizeof(g)) == sizeof(g) && g > 0 ? 0 : 1);
	}
	close(pfd[1]);
	if (read(pfd[0], &g2, sizeof(g2)) != sizeof(g2))
		zdtm_fail("c2 did not send g2's pid");
	close(pfd[0]);
	zdtm_expect_exit(c2, 0, "c2");
	if (g2 <= 0)
		return;
	if (proc_stat(g2, &ppid, &pgrp, &sid) || ppid != root_pid)
		zdtm_fail("new orphan g2 (pid %d) has parent %d, not the root", (int)g2, (int)ppid);
	if (zdtm_waitpid(g2, &status) != g2)
		zdtm_fail("the root cannot reap the new orphan g2 (pid %d): %m", (int)g2);
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		zdtm_fail("g2 %s", zdtm_wait_str(status));
}

int main(int argc, char **argv)
{
	int dead_pgid = argc > 1 && !strcmp(argv[1], "pgid");
	pid_t c1, ppid, pgrp, sid, want_pgid;
	struct msg g1;
	int v = -1;

	zdtm_init(argc, argv);
	root_pid = getpid();
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
		zdtm_die("PR_SET_CHILD_SUBREAPER: %m");
	zdtm_tree_sync_init();
	c1 = fork();
	if (c1 < 0)
		zdtm_die("fork: %m");
	if (c1 == 0) {
		pid_t g;

		zdtm_set_role("c1");
		if (dead_pgid && setpgid(0, 0))
			zdtm_die("setpgid: %m");
		g = fork();
		if (g < 0)
			zdtm_die("fork: %m");
		if (g == 0)
			g1_main(dead_pgid ? getpgid(0) : root_pid);
		_exit(0);
	}
	if (zdtm_tree_wait(&g1, sizeof(g1)) != sizeof(g1))
		zdtm_die("g1 did not get ready");
	zdtm_expect_exit(c1, 0, "c1");
	want_pgid = dead_pgid ? c1 : root_pid;
	if (proc_stat(g1.pid, &ppid, &pgrp, &sid) || ppid != root_pid || pgrp != want_pgid ||
	    sid != root_pid)
		zdtm_die("g1 not reparented as expected: ppid %d pgrp %d sid %d", ppid, pgrp, sid);
	if (zdtm_failed())
		zdtm_die("set-up failed");
	zdtm_ready();

	zdtm_wait_check();

	if (prctl(PR_GET_CHILD_SUBREAPER, &v, 0, 0, 0) || v != 1)
		zdtm_fail("PR_GET_CHILD_SUBREAPER: %d (%m)", v);
	if (proc_stat(g1.pid, &ppid, &pgrp, &sid))
		zdtm_fail("g1 (pid %d) is gone", (int)g1.pid);
	else if (ppid != root_pid || pgrp != want_pgid || sid != root_pid)
		zdtm_fail("g1: ppid/pgrp/session %d/%d/%d, expected %d/%d/%d", ppid, pgrp, sid,
			  root_pid, want_pgid, root_pid);
	zdtm_stop_child(g1.pid, "g1");
	check_new_orphan();
	zdtm_pass_or_fail();
}

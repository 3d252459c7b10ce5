/*
 * tty_session: a session leader whose controlling terminal is a pty of the tree, with a
 * foreground and a background process group.
 *
 *   root  holds the pty master
 *   └─ s    setsid(), opens the slave without O_NOCTTY: its controlling terminal
 *      ├─ fg  setpgid(0, 0), made the terminal's foreground group by s (tcsetpgrp)
 *      └─ bg  setpgid(0, 0), a background group
 *
 * After SIGTERM: s is still its session's leader and the slave is its controlling
 * terminal (tcgetsid, /proc/self/stat tty_nr = the slave's device); the terminal's
 * foreground group is fg's (tcgetpgrp, and tpgid in /proc/PID/stat of each); fg and bg
 * are in s's session with that controlling terminal too; fg reads a line the root types
 * on the master through /dev/tty, which it opened before READY; bg, which ignores SIGTTIN, gets EIO when it reads the terminal (it is in
 * the background). SIGTERM travels root -> s -> fg, bg.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

static int master;
static char slave_path[64];

/* Fields 7 (tty_nr) and 8 (tpgid) of /proc/self/stat. */
static void stat_tty(unsigned long *tty_nr, int *tpgid)
{
	char buf[1024];
	ssize_t n = zdtm_read_file("/proc/self/stat", buf, sizeof(buf) - 1);
	char *p;

	*tty_nr = 0;
	*tpgid = 0;
	if (n <= 0)
		return;
	buf[n] = 0;
	p = strrchr(buf, ')');
	if (p)
		sscanf(p + 2, "%*c %*d %*d %*d %lu %d", tty_nr, tpgid);
}

/* The checks every process of the session makes with its fd `tty` of the slave. */
static void check_terminal(int tty, pid_t sid, pid_t fg)
{
	struct stat s;
	unsigned long tty_nr;
	int tpgid;

	if (getsid(0) != sid)
		zdtm_fail("session %d, expected %d", getsid(0), sid);
	if (tcgetsid(tty) != sid)
		zdtm_fail("the terminal's session is %d, expected %d", tcgetsid(tty), sid);
	if (tcgetpgrp(tty) != fg)
		zdtm_fail("the terminal's foreground group is %d, expected %d", tcgetpgrp(tty), fg);
	stat_tty(&tty_nr, &tpgid);
	if (fstat(tty, &s) || tty_nr != s.st_rdev)
		zdtm_fail("controlling terminal %#lx, the slave is %#lx", tty_nr,
			  (unsigned long)s.st_rdev);
	if (tpgid != fg)
		zdtm_fail("tpgid %d, expected %d", tpgid, fg);
}

static void member(const char *role, pid_t sid)
{
	pid_t fg;
	int tty, dev_tty;
	char buf[64];
	struct stat st;

	zdtm_set_role(role);
	if (setpgid(0, 0))
		zdtm_die("setpgid: %m");
	tty = open(slave_path, O_RDWR | O_NOCTTY);
	if (tty < 0)
		zdtm_die("open %s: %m", slave_path);
	if (!strcmp(role, "bg"))
		signal(SIGTTIN, SIG_IGN);
	dev_tty = open("/dev/tty", O_RDWR);
	if (dev_tty < 0)
		zdtm_die("open /dev/tty: %m");
	/* wait until s made the foreground group (fg's) */
	for (int i = 0; i < 5000 && tcgetpgrp(tty) == sid; i++)
		usleep(1000);
	fg = tcgetpgrp(tty);
	zdtm_tree_ready(&fg, sizeof(fg));
	zdtm_wait_check();
	check_terminal(tty, sid, fg);
	if (!strcmp(role, "fg")) {
		struct pollfd p = { .fd = dev_tty, .events = POLLIN };
		ssize_t r;

		if (fg != getpgrp())
			zdtm_fail("fg is not in the foreground group");
		if (fstat(dev_tty, &st) || st.st_rdev != makedev(5, 0))
			zdtm_fail("its /dev/tty fd is not /dev/tty");
		if (tcgetpgrp(dev_tty) != fg)
			zdtm_fail("/dev/tty: foreground group %d, expected %d", tcgetpgrp(dev_tty), fg);
		if (poll(&p, 1, 5000) != 1)
			zdtm_fail("nothing to read on /dev/tty");
		r = read(dev_tty, buf, sizeof(buf));
		if (r != 6 || memcmp(buf, "hello\n", 6))
			zdtm_fail("read %zd bytes \"%.*s\", expected \"hello\\n\"", r,
				  r > 0 ? (int)r : 0, buf);
	} else {
		if (fg == getpgrp())
			zdtm_fail("bg is in the foreground group");
		if (read(tty, buf, sizeof(buf)) != -1 || errno != EIO)
			zdtm_fail("a read of the terminal in the background did not fail with EIO");
	}
	zdtm_child_exit();
}

int main(int argc, char **argv)
{
	pid_t s, kids[2];
	int tty;

	zdtm_init(argc, argv);
	master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master))
		zdtm_die("posix_openpt: %m");
	snprintf(slave_path, sizeof(slave_path), "%s", ptsname(master));
	zdtm_tree_sync_init();
	s = fork();
	if (s < 0)
		zdtm_die("fork: %m");
	if (s == 0) {
		zdtm_set_role("s");
		if (setsid() < 0)
			zdtm_die("setsid: %m");
		tty = open(slave_path, O_RDWR);	/* the controlling terminal */
		if (tty < 0)
			zdtm_die("open %s: %m", slave_path);
		for (int i = 0; i < 2; i++) {
			kids[i] = fork();
			if (kids[i] < 0)
				zdtm_die("fork: %m");
			if (kids[i] == 0)
				member(i ? "bg" : "fg", getsid(0));
			setpgid(kids[i], kids[i]);
		}
		signal(SIGTTOU, SIG_IGN);
		if (tcsetpgrp(tty, kids[0]))
			zdtm_die("tcsetpgrp: %m");
		signal(SIGTTOU, SIG_DFL);
		zdtm_tree_ready(&kids[0], sizeof(kids[0]));
		zdtm_wait_check();
		check_terminal(tty, getpid(), kids[0]);
		zdtm_stop_child(kids[0], "fg");
		zdtm_stop_child(kids[1], "bg");
		zdtm_child_exit();
	}
	zdtm_tree_wait(NULL, 0);
	zdtm_ready();
	zdtm_wait_check();
	/* a line for fg (non-blocking: fg polls for it) */
	if (write(master, "hello\n", 6) != 6)
		zdtm_fail("write to the master: %m");
	kill(s, SIGTERM);
	zdtm_expect_exit(s, 0, "s");
	zdtm_pass_or_fail();
}

/*
 * tty_pty_pair: a pseudo-terminal pair inside the process, data queued both ways.
 *
 *   master  /dev/ptmx (O_RDWR|O_NOCTTY), packet mode off, window 33x101
 *   slave   /dev/pts/N (O_RDWR|O_NOCTTY|O_NONBLOCK): non-canonical, no echo, no
 *           signals, VMIN 1, VTIME 0, VINTR ^G, no ONLCR; exclusive (TIOCEXCL);
 *           then the pair is locked (TIOCSPTLCK)
 *   queued  "typed at the slave, not read: 0123456789" written on the master (in
 *           the slave's input queue), "printed by the slave, not read" written on
 *           the slave (in the master's input queue)
 * On SIGTERM: both termios, the window size, the lock, the exclusive mode and
 * the packet mode are as they were; the slave is still the master's slave
 * (its rdev is /dev/pts/TIOCGPTN; the index may differ if another pty took it);
 * each queue holds exactly its bytes, once, and nothing more (FIONREAD first,
 * then the bytes, then EAGAIN); then the pair still carries bytes both ways.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

static const char to_slave[] = "typed at the slave, not read: 0123456789";
static const char to_master[] = "printed by the slave, not read";

static int same_termios(const struct termios *a, const struct termios *b)
{
	return a->c_iflag == b->c_iflag && a->c_oflag == b->c_oflag && a->c_cflag == b->c_cflag &&
	       a->c_lflag == b->c_lflag && !memcmp(a->c_cc, b->c_cc, 19);
}

/* Reads what `fd` holds now: exactly `want`, then nothing more. */
static void check_queue(const char *name, int fd, const char *want)
{
	char buf[256];
	size_t len = strlen(want), got = 0;
	int n = -1, fl = fcntl(fd, F_GETFL);
	ssize_t r;

	if (ioctl(fd, FIONREAD, &n) || n != (int)len)
		zdtm_fail("%s: FIONREAD says %d bytes, expected %zu", name, n, len);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	while (got < sizeof(buf) && (r = read(fd, buf + got, sizeof(buf) - got)) > 0)
		got += r;
	if (got != len || memcmp(buf, want, len))
		zdtm_fail("%s: read %zu bytes \"%.*s\", expected \"%s\"", name, got, (int)got, buf,
			  want);
	if (read(fd, buf, 1) != -1 || errno != EAGAIN)
		zdtm_fail("%s: more bytes after the queued ones", name);
	fcntl(fd, F_SETFL, fl);
}

/* One byte string through the pair from `from` to `to`. */
static void check_carries(const char *name, int from, int to)
{
	char buf[16];
	struct pollfd p = { .fd = to, .events = POLLIN };
	ssize_t r;

	if (write(from, "ping", 4) != 4)
		zdtm_fail("%s: write: %m", name);
	if (poll(&p, 1, 5000) != 1) {
		zdtm_fail("%s: nothing arrives", name);
		return;
	}
	usleep(100000);
	r = read(to, buf, sizeof(buf));
	if (r != 4 || memcmp(buf, "ping", 4))
		zdtm_fail("%s: read %zd bytes \"%.*s\", expected \"ping\"", name, r, r > 0 ? (int)r : 0,
			  buf);
}

int main(int argc, char **argv)
{
	struct termios st, mt, now;
	struct winsize ws = { .ws_row = 33, .ws_col = 101 }, wnow;
	int master, slave, one = 1, v, index;
	struct stat s;

	zdtm_init(argc, argv);
	master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master))
		zdtm_die("posix_openpt: %m");
	slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_NONBLOCK);
	if (slave < 0)
		zdtm_die("open %s: %m", ptsname(master));
	if (tcgetattr(slave, &st))
		zdtm_die("tcgetattr: %m");
	st.c_lflag &= ~(ICANON | ECHO | ECHOE | ECHOK | ECHONL | ISIG | IEXTEN);
	st.c_oflag &= ~ONLCR;
	st.c_iflag &= ~ICRNL;
	st.c_cc[VMIN] = 1;
	st.c_cc[VTIME] = 0;
	st.c_cc[VINTR] = 7;
	if (tcsetattr(slave, TCSANOW, &st) || tcgetattr(slave, &st) || tcgetattr(master, &mt))
		zdtm_die("tcsetattr: %m");
	if (ioctl(master, TIOCSWINSZ, &ws) || ioctl(slave, TIOCEXCL))
		zdtm_die("TIOCSWINSZ/TIOCEXCL: %m");
	if (write(master, to_slave, strlen(to_slave)) != (ssize_t)strlen(to_slave) ||
	    write(slave, to_master, strlen(to_master)) != (ssize_t)strlen(to_master))
		zdtm_die("write: %m");
	/* the bytes reach the other side's queue through the kernel's flip buffers */
	for (int i = 0; i < 1000; i++) {
		int a = 0, b = 0;

		ioctl(slave, FIONREAD, &a);
		ioctl(master, FIONREAD, &b);
		if (a == (int)strlen(to_slave) && b == (int)strlen(to_master))
			break;
		usleep(1000);
	}
	if (ioctl(master, TIOCSPTLCK, &one))
		zdtm_die("TIOCSPTLCK: %m");

	zdtm_ready();
	zdtm_wait_check();

	if (tcgetattr(slave, &now) || !same_termios(&now, &st))
		zdtm_fail("slave termios: lflag %#x iflag %#x oflag %#x VINTR %d, expected %#x %#x %#x %d",
			  now.c_lflag, now.c_iflag, now.c_oflag, now.c_cc[VINTR], st.c_lflag,
			  st.c_iflag, st.c_oflag, st.c_cc[VINTR]);
	if (tcgetattr(master, &now) || !same_termios(&now, &mt))
		zdtm_fail("master termios differ");
	if (ioctl(slave, TIOCGWINSZ, &wnow) || wnow.ws_row != 33 || wnow.ws_col != 101)
		zdtm_fail("window %dx%d, expected 33x101", wnow.ws_row, wnow.ws_col);
	if (ioctl(master, TIOCGPTLCK, &v) || v != 1)
		zdtm_fail("the pair is not locked");
	if (ioctl(slave, TIOCGEXCL, &v) || v != 1)
		zdtm_fail("the slave is not exclusive");
	if (ioctl(master, TIOCGPKT, &v) || v != 0)
		zdtm_fail("packet mode is on");
	if (ioctl(master, TIOCGPTN, &index) || fstat(slave, &s) || major(s.st_rdev) < 136 ||
	    major(s.st_rdev) > 143 || (int)((major(s.st_rdev) - 136) * 256 + minor(s.st_rdev)) != index)
		zdtm_fail("the slave is not /dev/pts/%d of the master", index);
	check_queue("the slave's input", slave, to_slave);
	check_queue("the master's input", master, to_master);
	check_carries("master to slave", master, slave);
	check_carries("slave to master", slave, master);
	zdtm_pass_or_fail();
}

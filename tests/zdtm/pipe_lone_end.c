/*
 * pipe_lone_end: pipes of which the process holds one end only, the other
 * end being closed everywhere (as with GNU make's jobs, or a pipeline
 * whose first stage has finished).
 *
 *   A: 20000 bytes of pattern in it; the process holds only the read end
 *      (fd 10, blocking), the write end is closed everywhere.
 *   B: the process holds only the write end (fd 11), the read end is
 *      closed everywhere.
 *
 * On SIGTERM: A gives back exactly the 20000 bytes in order, then EOF
 * (read returns 0, twice).  Writing to B fails with EPIPE and raises
 * SIGPIPE (blocked here, so it stays pending and is taken with
 * sigtimedwait).  Both fds are still pipes with their access modes.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define A_SIZE 20000
#define A_FD 10
#define B_FD 11

static uint8_t buf[A_SIZE + 4096];

static void check_a(void)
{
	size_t got = 0;
	ssize_t r;

	if (fcntl(A_FD, F_GETFL) != O_RDONLY)
		zdtm_fail("A: F_GETFL %#o, expected O_RDONLY", fcntl(A_FD, F_GETFL));
	/* blocking reads: EOF must come, as no writer is left */
	while (got < sizeof(buf) && (r = read(A_FD, buf + got, sizeof(buf) - got)) != 0) {
		if (r < 0) {
			if (errno == EINTR)
				continue;
			zdtm_fail("A: read after %zu bytes: %m", got);
			return;
		}
		got += r;
	}
	if (got != A_SIZE)
		zdtm_fail("A: %zu bytes before EOF, expected %d", got, A_SIZE);
	else if (zdtm_check(buf, A_SIZE, 41) != A_SIZE)
		zdtm_fail("A: data differs at offset %zu", zdtm_check(buf, A_SIZE, 41));
	if ((r = read(A_FD, buf, 1)) != 0)
		zdtm_fail("A: read after EOF returned %zd", r);
}

static void check_b(void)
{
	struct timespec zero = { 0, 0 };
	sigset_t pipe_set;
	siginfo_t si;
	ssize_t r;

	if (fcntl(B_FD, F_GETFL) != O_WRONLY)
		zdtm_fail("B: F_GETFL %#o, expected O_WRONLY", fcntl(B_FD, F_GETFL));
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	r = write(B_FD, "x", 1);
	if (r != -1 || errno != EPIPE)
		zdtm_fail("B: write returned %zd (%m), expected EPIPE", r);
	if (sigtimedwait(&pipe_set, &si, &zero) != SIGPIPE)
		zdtm_fail("B: no SIGPIPE pending after the write (%m)");
}

int main(int argc, char **argv)
{
	int a[2], b[2];
	struct stat st;
	sigset_t pipe_set;

	zdtm_init(argc, argv);
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	if (sigprocmask(SIG_BLOCK, &pipe_set, NULL))
		zdtm_die("sigprocmask: %m");

	if (pipe(a) || pipe(b))
		zdtm_die("pipe: %m");
	zdtm_fill(buf, A_SIZE, 41);
	if (write(a[1], buf, A_SIZE) != A_SIZE)
		zdtm_die("write A: %m");
	close(a[1]);
	close(b[0]);
	if (dup2(a[0], A_FD) != A_FD || dup2(b[1], B_FD) != B_FD)
		zdtm_die("dup2: %m");
	close(a[0]);
	close(b[1]);
	if (fstat(A_FD, &st) || !S_ISFIFO(st.st_mode))
		zdtm_die("fd %d is not a pipe", A_FD);

	zdtm_ready();
	zdtm_wait_check();

	if (fstat(A_FD, &st) || !S_ISFIFO(st.st_mode))
		zdtm_fail("A: fd %d is not a pipe any more", A_FD);
	if (fstat(B_FD, &st) || !S_ISFIFO(st.st_mode))
		zdtm_fail("B: fd %d is not a pipe any more", B_FD);
	check_a();
	check_b();
	zdtm_pass_or_fail();
}

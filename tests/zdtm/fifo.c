/*
 * fifo: named FIFOs (mkfifo) with their ends open, with data in flight.
 *
 *   A: fifo_a, three descriptions: read-write, read-only (O_NONBLOCK) and
 *      write-only; capacity raised to 128 KiB, 10000 bytes unread
 *   B: fifo_b (mode 0640), a read end (O_NONBLOCK) and a write end with
 *      3000 bytes unread, then unlinked (a deleted FIFO, still open)
 *   C: fifo_c, a read end (O_NONBLOCK) whose writer wrote 500 bytes and
 *      closed: no writer is left anywhere
 *   D: fifo_d, a write end whose reader read nothing and closed: 200
 *      bytes stay in the FIFO for the next reader
 *
 * On SIGTERM: every fd keeps its F_GETFL; A's ends are one FIFO, the one at
 * its path, with its capacity; B is deleted (nlink 0, link "fifo_b...
 * (deleted)", mode 0640); each FIFO gives back exactly its bytes in order
 * (A and B then EAGAIN: writers remain; C then EOF: none remain); a reader
 * opened on fifo_d now reads D's 200 bytes; bytes written through each
 * write end come out of the read end of the same FIFO; after B's writer is
 * closed its reader sees EOF.
 */
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define A_SIZE 10000
#define A_CAP (128 * 1024)
#define B_SIZE 3000
#define C_SIZE 500
#define D_SIZE 200

static uint8_t buf[A_CAP + 4096];

/* Reads what fd holds now (non-blocking); returns the count, and in *end
 * what stopped it: 0 for EOF, EAGAIN, or another errno. */
static size_t drain(int fd, int *end)
{
	int fl = fcntl(fd, F_GETFL);
	size_t got = 0;
	ssize_t r;

	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	while (got < sizeof(buf) && (r = read(fd, buf + got, sizeof(buf) - got)) > 0)
		got += r;
	*end = r == 0 ? 0 : errno;
	fcntl(fd, F_SETFL, fl);
	return got;
}

static void check_data(const char *name, int fd, size_t size, uint64_t seed, int want_end)
{
	int end;
	size_t got = drain(fd, &end);

	if (got != size)
		zdtm_fail("FIFO %s: %zu bytes in it, expected %zu", name, got, size);
	else if (zdtm_check(buf, size, seed) != size)
		zdtm_fail("FIFO %s: data differs at offset %zu", name, zdtm_check(buf, size, seed));
	if (end != want_end)
		zdtm_fail("FIFO %s: after the data, read ended with %s, expected %s", name,
			  end ? strerror(end) : "EOF", want_end ? strerror(want_end) : "EOF");
}

static void check_flags(const char *name, int fd, int want)
{
	if (fcntl(fd, F_GETFL) != want)
		zdtm_fail("FIFO %s: fd %d F_GETFL %#o, expected %#o", name, fd, fcntl(fd, F_GETFL),
			  want);
}

/* A byte written to w comes out of r. */
static void check_roundtrip(const char *name, int w, int r)
{
	int end;

	if (write(w, "z", 1) != 1)
		zdtm_fail("FIFO %s: write to fd %d: %m", name, w);
	else if (drain(r, &end) != 1 || buf[0] != 'z')
		zdtm_fail("FIFO %s: a byte written to fd %d does not come out of fd %d", name, w, r);
}

static void same_fifo(const char *name, int fd, struct stat *want)
{
	struct stat st;

	if (fstat(fd, &st) || !S_ISFIFO(st.st_mode) || st.st_ino != want->st_ino ||
	    st.st_dev != want->st_dev)
		zdtm_fail("FIFO %s: fd %d is not the FIFO it was", name, fd);
}

static void write_pattern(int fd, size_t size, uint64_t seed)
{
	zdtm_fill(buf, size, seed);
	if (write(fd, buf, size) != (ssize_t)size)
		zdtm_die("write %zu bytes: %m", size);
}

int main(int argc, char **argv)
{
	int a_rw, a_r, a_w, b_r, b_w, c_r, c_w, d_r, d_w;
	int a_rw_fl, a_r_fl, a_w_fl, b_r_fl, b_w_fl, c_r_fl, d_w_fl;
	struct stat a_st, b_st, st;
	char cwd[PATH_MAX], link[PATH_MAX + 32], path[64], want[PATH_MAX + 16];
	ssize_t n;

	zdtm_init(argc, argv);
	if (!getcwd(cwd, sizeof(cwd)))
		zdtm_die("getcwd: %m");
	umask(0);
	for (const char *f = "abcd"; *f; f++) {
		snprintf(path, sizeof(path), "fifo_%c", *f);
		unlink(path);
		if (mkfifo(path, *f == 'b' ? 0640 : 0600))
			zdtm_die("mkfifo %s: %m", path);
	}

	/* A: the read-write end first, so that the others do not block */
	if ((a_rw = open("fifo_a", O_RDWR)) < 0 || (a_r = open("fifo_a", O_RDONLY | O_NONBLOCK)) < 0 ||
	    (a_w = open("fifo_a", O_WRONLY)) < 0)
		zdtm_die("open fifo_a: %m");
	if (fcntl(a_w, F_SETPIPE_SZ, A_CAP) != A_CAP)
		zdtm_die("F_SETPIPE_SZ: %m");
	write_pattern(a_w, A_SIZE, 41);

	/* B: deleted while open */
	if ((b_r = open("fifo_b", O_RDONLY | O_NONBLOCK)) < 0 || (b_w = open("fifo_b", O_WRONLY)) < 0)
		zdtm_die("open fifo_b: %m");
	write_pattern(b_w, B_SIZE, 42);
	if (unlink("fifo_b"))
		zdtm_die("unlink fifo_b: %m");

	/* C: the writer is gone */
	if ((c_r = open("fifo_c", O_RDONLY | O_NONBLOCK)) < 0 || (c_w = open("fifo_c", O_WRONLY)) < 0)
		zdtm_die("open fifo_c: %m");
	write_pattern(c_w, C_SIZE, 43);
	close(c_w);

	/* D: the reader is gone, its bytes wait for the next one */
	if ((d_r = open("fifo_d", O_RDONLY | O_NONBLOCK)) < 0 || (d_w = open("fifo_d", O_WRONLY)) < 0)
		zdtm_die("open fifo_d: %m");
	write_pattern(d_w, D_SIZE, 44);
	close(d_r);

	a_rw_fl = fcntl(a_rw, F_GETFL);
	a_r_fl = fcntl(a_r, F_GETFL);
	a_w_fl = fcntl(a_w, F_GETFL);
	b_r_fl = fcntl(b_r, F_GETFL);
	b_w_fl = fcntl(b_w, F_GETFL);
	c_r_fl = fcntl(c_r, F_GETFL);
	d_w_fl = fcntl(d_w, F_GETFL);
	if (fstat(a_rw, &a_st) || fstat(b_r, &b_st))
		zdtm_die("fstat: %m");

	zdtm_ready();
	zdtm_wait_check();

	check_flags("A", a_rw, a_rw_fl);
	check_flags("A", a_r, a_r_fl);
	check_flags("A", a_w, a_w_fl);
	check_flags("B", b_r, b_r_fl);
	check_flags("B", b_w, b_w_fl);
	check_flags("C", c_r, c_r_fl);
	check_flags("D", d_w, d_w_fl);

	/* A: one FIFO, still the one at its path */
	if (stat("fifo_a", &st) || st.st_ino != a_st.st_ino || st.st_dev != a_st.st_dev)
		zdtm_fail("FIFO A: fifo_a is not the FIFO the fds refer to");
	same_fifo("A", a_r, &st);
	same_fifo("A", a_w, &st);
	same_fifo("A", a_rw, &st);
	if (fcntl(a_r, F_GETPIPE_SZ) != A_CAP)
		zdtm_fail("FIFO A: capacity %d, expected %d", fcntl(a_r, F_GETPIPE_SZ), A_CAP);
	check_data("A", a_r, A_SIZE, 41, EAGAIN);
	check_roundtrip("A", a_w, a_r);
	check_roundtrip("A", a_rw, a_r);
	check_roundtrip("A", a_w, a_rw);

	/* B: deleted, same mode, one FIFO */
	if (fstat(b_r, &st) || !S_ISFIFO(st.st_mode) || st.st_nlink != 0 ||
	    (st.st_mode & 07777) != 0640)
		zdtm_fail("FIFO B: not a deleted FIFO of mode 0640 (mode %o, nlink %lu)", st.st_mode,
			  (unsigned long)st.st_nlink);
	same_fifo("B", b_w, &st);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", b_r);
	n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	snprintf(want, sizeof(want), "%s/fifo_b", cwd);
	if (strncmp(link, want, strlen(want)) || n < 10 || strcmp(link + n - 10, " (deleted)"))
		zdtm_fail("FIFO B: %s -> \"%s\", expected \"%s... (deleted)\"", path, link, want);
	check_data("B", b_r, B_SIZE, 42, EAGAIN);
	check_roundtrip("B", b_w, b_r);

	/* C: the bytes, then EOF: no writer anywhere */
	check_data("C", c_r, C_SIZE, 43, 0);

	/* D: a new reader gets the bytes the writer left */
	if ((d_r = open("fifo_d", O_RDONLY | O_NONBLOCK)) < 0)
		zdtm_fail("FIFO D: open a reader: %m");
	else {
		if (stat("fifo_d", &st))
			zdtm_fail("FIFO D: stat fifo_d: %m");
		same_fifo("D", d_w, &st);
		check_data("D", d_r, D_SIZE, 44, EAGAIN);
		check_roundtrip("D", d_w, d_r);
		close(d_r);
	}

	/* B: EOF once its only writer is closed */
	close(b_w);
	check_data("B", b_r, 0, 42, 0);
	zdtm_pass_or_fail();
}

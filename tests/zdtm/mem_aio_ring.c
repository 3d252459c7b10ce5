/*
 * mem_aio_ring: two AIO contexts (io_setup; one small, one of several pages) with their
 * completions reaped, one of them used once before READY. On SIGTERM the context ids are the
 * same and each still works: a read submitted with io_submit completes through io_getevents,
 * and io_destroy succeeds.
 */
#include "zdtm.h"
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	aio_context_t ctx = 0, before, big = 0;
	struct iocb cb, *cbs[1] = { &cb };
	struct io_event ev;
	char buf[16] = {0};
	int fd;
	zdtm_init(argc, argv);
	if (syscall(SYS_io_setup, 64, &ctx) || syscall(SYS_io_setup, 1000, &big)) zdtm_die("io_setup");
	before = ctx;
	fd = open("data", O_CREAT | O_RDWR, 0600);
	if (write(fd, "hello aio", 9) != 9) zdtm_die("write");
	memset(&cb, 0, sizeof(cb));
	cb.aio_fildes = fd; cb.aio_lio_opcode = IOCB_CMD_PREAD;
	cb.aio_buf = (unsigned long)buf; cb.aio_nbytes = 9; cb.aio_offset = 0;
	if (syscall(SYS_io_submit, big, 1, cbs) != 1 || syscall(SYS_io_getevents, big, 1, 1, &ev, NULL) != 1)
		zdtm_die("first use");
	zdtm_ready();
	zdtm_wait_check();
	if (ctx != before) zdtm_fail("ctx changed");
	memset(&cb, 0, sizeof(cb));
	cb.aio_fildes = fd; cb.aio_lio_opcode = IOCB_CMD_PREAD;
	cb.aio_buf = (unsigned long)buf; cb.aio_nbytes = 9; cb.aio_offset = 0;
	if (syscall(SYS_io_submit, ctx, 1, cbs) != 1) zdtm_fail("io_submit: %m");
	else if (syscall(SYS_io_getevents, ctx, 1, 1, &ev, NULL) != 1 || ev.res != 9 || memcmp(buf, "hello aio", 9))
		zdtm_fail("io_getevents");
	if (syscall(SYS_io_destroy, ctx)) zdtm_fail("io_destroy: %m");
	memset(buf, 0, sizeof(buf));
	if (syscall(SYS_io_submit, big, 1, cbs) != 1) zdtm_fail("io_submit (big): %m");
	else if (syscall(SYS_io_getevents, big, 1, 1, &ev, NULL) != 1 || ev.res != 9 || memcmp(buf, "hello aio", 9))
		zdtm_fail("io_getevents (big)");
	if (syscall(SYS_io_destroy, big)) zdtm_fail("io_destroy (big): %m");
	zdtm_pass_or_fail();
}

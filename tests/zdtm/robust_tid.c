/*
 * robust_tid: the robust futex list head and the clear_child_tid address.
 *
 * Both are per-task kernel state set by glibc at startup.  Before READY
 * the test reads glibc's values (get_robust_list, PR_GET_TID_ADDRESS),
 * checks them for plausibility, and then replaces them with its own:
 * set_robust_list() to an (empty) robust_list_head in the test's data
 * and set_tid_address() to a variable of the test - non-default values
 * that a restore can only get right if it really restores them.
 * On SIGTERM get_robust_list() must return the same head and length and
 * PR_GET_TID_ADDRESS the same address.  With argv[1] = "glibc" glibc's
 * own values are kept and checked instead.
 */
#include "zdtm.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct robust_list_head my_head;
static int my_tid_word;

static int get_robust(void **head, size_t *len)
{
	struct robust_list_head *h = NULL;

	if (syscall(SYS_get_robust_list, 0, &h, len))
		return -1;
	*head = h;
	return 0;
}

static int get_tid_address(void **addr)
{
	*addr = NULL;
	return prctl(PR_GET_TID_ADDRESS, addr, 0, 0, 0);
}

int main(int argc, char **argv)
{
	void *head, *tidaddr, *glibc_head;
	void *want_head = &my_head, *want_tidaddr = &my_tid_word;
	int keep_glibc = argc > 1 && !strcmp(argv[1], "glibc");
	size_t len;
	int have_tid_addr;

	zdtm_init(argc, argv);

	/* glibc's values */
	if (get_robust(&glibc_head, &len))
		zdtm_die("get_robust_list: %m");
	if (!glibc_head || len != sizeof(struct robust_list_head))
		zdtm_die("glibc's robust list: head %p len %zu", glibc_head, len);
	have_tid_addr = get_tid_address(&tidaddr) == 0;
	if (!have_tid_addr && errno != EINVAL)	/* EINVAL: no CONFIG_CHECKPOINT_RESTORE */
		zdtm_die("PR_GET_TID_ADDRESS: %m");
	if (have_tid_addr && !tidaddr)
		zdtm_die("glibc's clear_child_tid address is NULL");

	if (keep_glibc) {
		want_head = glibc_head;
		want_tidaddr = tidaddr;
	} else {
		/* our values: an empty robust list */
		my_head.list.next = &my_head.list;
		my_head.futex_offset = 8;
		my_head.list_op_pending = NULL;
		if (syscall(SYS_set_robust_list, &my_head, sizeof(my_head)))
			zdtm_die("set_robust_list: %m");
		if (syscall(SYS_set_tid_address, &my_tid_word) != getpid())
			zdtm_die("set_tid_address did not return our tid");
	}

	zdtm_ready();
	zdtm_wait_check();

	if (get_robust(&head, &len))
		zdtm_fail("get_robust_list: %m");
	else if (head != want_head || len != sizeof(my_head))
		zdtm_fail("robust list head %p len %zu, expected %p len %zu (glibc's was %p)", head,
			  len, want_head, sizeof(my_head), glibc_head);
	if (!keep_glibc && (my_head.list.next != &my_head.list || my_head.futex_offset != 8))
		zdtm_fail("robust list head contents changed");
	if (have_tid_addr) {
		if (get_tid_address(&tidaddr))
			zdtm_fail("PR_GET_TID_ADDRESS: %m");
		else if (tidaddr != want_tidaddr)
			zdtm_fail("clear_child_tid address %p, expected %p", tidaddr, want_tidaddr);
	}
	zdtm_pass_or_fail();
}

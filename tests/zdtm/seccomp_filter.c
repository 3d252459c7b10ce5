/* Seccomp filters: one shared by three threads (installed with TSYNC), one more
 * in one thread only (with SECCOMP_FILTER_FLAG_LOG), and one more in a child
 * that inherited the first. Each filter makes getpriority() with a magic
 * "which" fail with its own errno (harmless: any other call passes). After the
 * restore every thread and the child must see exactly its filters
 * (Seccomp: 2 and Seccomp_filters: N in its status, each magic getting its
 * errno, the others EINVAL), and the first filter must still be shared: a new
 * TSYNC filter from the main thread fails naming the one thread whose chain
 * diverged (the thread with its own filter), and installs nothing. */
#include "zdtm.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum { MAGIC_ALL = 0x5ec, MAGIC_T2 = 0x5ed, MAGIC_CHILD = 0x5ee, MAGIC_NEW = 0x5ef };

static long install(unsigned which, int err, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getpriority, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, which, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

/* The errno getpriority(which, 0) fails with (0 if it succeeds). */
static int prio_errno(unsigned which)
{
	errno = 0;
	if (syscall(SYS_getpriority, which, 0) >= 0)
		return 0;
	return errno;
}

/* Checks the calling thread: its status and what each magic gets. */
static void check_self(const char *who, int nfilters, int e_all, int e_t2, int e_child, int e_new)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/self/task/%ld/status", (long)syscall(SYS_gettid));
	ssize_t n = zdtm_read_file(path, buf, sizeof(buf) - 1);
	if (n <= 0) {
		zdtm_fail("%s: reading %s", who, path);
		return;
	}
	buf[n] = 0;
	char *m = strstr(buf, "\nSeccomp:");
	char *c = strstr(buf, "\nSeccomp_filters:");
	if (!m || atoi(m + 9) != 2)
		zdtm_fail("%s: Seccomp mode is not 2", who);
	if (!c || atoi(c + 17) != nfilters)
		zdtm_fail("%s: Seccomp_filters is %d, expected %d", who, c ? atoi(c + 17) : -1, nfilters);
	int got;
	if ((got = prio_errno(MAGIC_ALL)) != e_all)
		zdtm_fail("%s: shared filter: errno %d, expected %d", who, got, e_all);
	if ((got = prio_errno(MAGIC_T2)) != e_t2)
		zdtm_fail("%s: thread filter: errno %d, expected %d", who, got, e_t2);
	if ((got = prio_errno(MAGIC_CHILD)) != e_child)
		zdtm_fail("%s: child filter: errno %d, expected %d", who, got, e_child);
	if ((got = prio_errno(MAGIC_NEW)) != e_new)
		zdtm_fail("%s: new filter: errno %d, expected %d", who, got, e_new);
}

static pthread_barrier_t setup, check;
static volatile pid_t t2_tid;

static void *worker(void *arg)
{
	long id = (long)arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_barrier_wait(&setup); /* the main thread installed the shared filter */
	if (id == 2) {
		t2_tid = (pid_t)syscall(SYS_gettid);
		if (install(MAGIC_T2, EACCES, SECCOMP_FILTER_FLAG_LOG))
			zdtm_die("t2: seccomp: %m");
	}
	pthread_barrier_wait(&setup); /* set up */
	pthread_barrier_wait(&check); /* check now */
	if (id == 2)
		check_self("t2", 2, EPERM, EACCES, EINVAL, EINVAL);
	else
		check_self("t1", 1, EPERM, EINVAL, EINVAL, EINVAL);
	return NULL;
}

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		zdtm_die("PR_SET_NO_NEW_PRIVS: %m");
	pthread_barrier_init(&setup, NULL, 3);
	pthread_barrier_init(&check, NULL, 3);
	pthread_t t[2];
	for (long i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)(i + 1)))
			zdtm_die("pthread_create");
	long r = install(MAGIC_ALL, EPERM, SECCOMP_FILTER_FLAG_TSYNC);
	if (r != 0)
		zdtm_die("seccomp(TSYNC): %ld %m", r);
	pthread_barrier_wait(&setup);
	pthread_barrier_wait(&setup);

	zdtm_tree_sync_init();
	pid_t child = fork();
	if (child < 0)
		zdtm_die("fork: %m");
	if (child == 0) {
		zdtm_set_role("child");
		if (install(MAGIC_CHILD, EXDEV, 0))
			zdtm_die("child: seccomp: %m");
		pid_t me = getpid();
		zdtm_tree_ready(&me, sizeof(me));
		zdtm_wait_check();
		check_self("child", 2, EPERM, EINVAL, EXDEV, EINVAL);
		zdtm_child_exit();
	}
	pid_t got;
	zdtm_tree_wait(&got, sizeof(got));
	zdtm_ready();
	zdtm_wait_check();

	check_self("main", 1, EPERM, EINVAL, EINVAL, EINVAL);
	/* The shared filter is one object for main and t1, not for t2's chain. */
	errno = 0;
	r = install(MAGIC_NEW, EPERM, SECCOMP_FILTER_FLAG_TSYNC);
	if (r != t2_tid)
		zdtm_fail("TSYNC from main returned %ld (errno %d), expected t2's tid %d", r, errno, (int)t2_tid);
	check_self("main after TSYNC", 1, EPERM, EINVAL, EINVAL, EINVAL);
	pthread_barrier_wait(&check);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	zdtm_stop_child(child, "child");
	zdtm_pass_or_fail();
}

/*
 * tree_threads: processes below the root that have several threads.
 *
 *   root (one thread)
 *   └─ c1: main thread + 3 workers
 *      └─ g1: main thread + 2 workers
 *
 * Every worker counts in a loop with a 1 ms nanosleep per step and keeps
 * its gettid() and a stack canary; the workers block SIGTERM so that the
 * main thread of each process gets it.  A dump that kills the tree has
 * to get rid of processes whose threads it traces: a thread-group leader
 * cannot be reaped while its other threads are dead but not yet released
 * by their tracer.
 *
 * On SIGTERM the root forwards it to c1, c1 to g1 (zdtm_stop_child).  In
 * c1 and g1 the main thread checks that /proc/self/task holds exactly
 * itself and its workers, that every worker still counts, then stops and
 * joins them; each worker checks its tid and canary.  Each process also
 * checks its pid and ppid.  The root checks its own pid and reaps c1.
 */
#include "zdtm.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAXT 3

struct worker {
	pthread_t th;
	pid_t tid;
	volatile unsigned long count;
	volatile int started;
	int bad;
	char err[160];
};

static struct worker workers[MAXT];
static int nworkers;
static volatile int quit;

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	volatile uint64_t canary[32];
	struct timespec ms = { 0, 1000000 };

	for (int i = 0; i < 32; i++)
		canary[i] = zdtm_pattern_word(w - workers + 1000, i);
	w->tid = syscall(SYS_gettid);
	w->started = 1;
	while (!quit) {
		w->count++;
		nanosleep(&ms, NULL);
	}
	if (syscall(SYS_gettid) != w->tid) {
		w->bad = 1;
		snprintf(w->err, sizeof(w->err), "worker %d: tid %ld, was %d", (int)(w - workers),
			 (long)syscall(SYS_gettid), (int)w->tid);
	}
	for (int i = 0; i < 32; i++)
		if (canary[i] != zdtm_pattern_word(w - workers + 1000, i)) {
			w->bad = 1;
			snprintf(w->err, sizeof(w->err), "worker %d: stack word %d changed",
				 (int)(w - workers), i);
			break;
		}
	return NULL;
}

static void start_workers(int n)
{
	sigset_t block, old;

	nworkers = n;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &block, &old);	/* the workers inherit it */
	for (int i = 0; i < n; i++)
		if (pthread_create(&workers[i].th, NULL, worker_main, &workers[i]))
			zdtm_die("pthread_create failed");
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	for (int i = 0; i < n; i++)
		while (!workers[i].started)
			usleep(1000);
}

static int count_tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.') {
			pid_t tid = atoi(e->d_name);
			int known = tid == getpid();

			for (int i = 0; i < nworkers; i++)
				known |= workers[i].tid == tid;
			if (!known)
				zdtm_fail("unknown thread %d in /proc/self/task", (int)tid);
			n++;
		}
	closedir(d);
	return n;
}

static void check_workers(void)
{
	unsigned long before[MAXT];
	int n = count_tasks();

	if (n != nworkers + 1)
		zdtm_fail("%d threads in /proc/self/task, expected %d", n, nworkers + 1);
	for (int i = 0; i < nworkers; i++)
		before[i] = workers[i].count;
	usleep(100000);
	for (int i = 0; i < nworkers; i++)
		if (workers[i].count == before[i])
			zdtm_fail("worker %d (tid %d) does not count any more", i, (int)workers[i].tid);
	quit = 1;
	for (int i = 0; i < nworkers; i++) {
		pthread_join(workers[i].th, NULL);
		if (workers[i].bad)
			zdtm_fail("%s", workers[i].err);
	}
}

static void check_ids(pid_t me, pid_t parent)
{
	if (getpid() != me)
		zdtm_fail("pid %d, was %d", (int)getpid(), (int)me);
	if (getppid() != parent)
		zdtm_fail("ppid %d, was %d", (int)getppid(), (int)parent);
}

static void g1_main(void)
{
	pid_t me = getpid(), parent = getppid();

	zdtm_set_role("g1");
	start_workers(2);
	zdtm_tree_ready(NULL, 0);
	zdtm_wait_check();
	check_ids(me, parent);
	check_workers();
	zdtm_child_exit();
}

static void c1_main(void)
{
	pid_t me = getpid(), parent = getppid(), g1;

	zdtm_set_role("c1");
	g1 = fork();
	if (g1 < 0)
		zdtm_die("fork: %m");
	if (g1 == 0)
		g1_main();
	start_workers(3);
	zdtm_tree_ready(NULL, 0);
	zdtm_wait_check();
	check_ids(me, parent);
	check_workers();
	zdtm_stop_child(g1, "g1");
	zdtm_child_exit();
}

int main(int argc, char **argv)
{
	pid_t me, c1;

	zdtm_init(argc, argv);
	me = getpid();
	zdtm_tree_sync_init();
	c1 = fork();
	if (c1 < 0)
		zdtm_die("fork: %m");
	if (c1 == 0) {
		c1_main();
		_exit(99);
	}
	zdtm_tree_wait(NULL, 0);

	zdtm_ready();
	zdtm_wait_check();
	if (getpid() != me)
		zdtm_fail("root pid %d, was %d", (int)getpid(), (int)me);
	zdtm_stop_child(c1, "c1");
	zdtm_pass_or_fail();
}

/* mem_shm_unlinked: POSIX shared memory (shm_open) and a named semaphore (sem_open),
 * both unlinked while mapped, as Python's multiprocessing does for its locks. On SIGTERM the
 * memory holds its pattern and the semaphore its value. */
#include "zdtm.h"
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#define LEN (1 << 20)
int main(int argc, char **argv)
{
	char name[64];
	int fd, v;
	unsigned char *p;
	sem_t *s;
	zdtm_init(argc, argv);
	snprintf(name, sizeof(name), "/zdtm-shm-%d", getpid());
	fd = shm_open(name, O_CREAT | O_RDWR | O_EXCL, 0600);
	if (fd < 0 || ftruncate(fd, LEN)) zdtm_die("shm_open");
	p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) zdtm_die("mmap");
	close(fd);
	shm_unlink(name);
	zdtm_fill(p, LEN, 7);
	snprintf(name, sizeof(name), "/zdtm-sem-%d", getpid());
	s = sem_open(name, O_CREAT | O_EXCL, 0600, 2);
	if (s == SEM_FAILED) zdtm_die("sem_open");
	sem_unlink(name);
	sem_post(s);
	zdtm_ready();
	zdtm_wait_check();
	if (zdtm_check(p, LEN, 7) != LEN) zdtm_fail("shm contents");
	if (sem_getvalue(s, &v) || v != 3) zdtm_fail("sem value %d", v);
	zdtm_pass_or_fail();
}

/*
 * tree_shared_anon: anonymous memory inherited over fork(), shared and
 * private.
 *
 * Before fork() the root maps 1 MiB MAP_SHARED|MAP_ANONYMOUS (shm) and
 * 1 MiB MAP_PRIVATE|MAP_ANONYMOUS (priv), and fills shm[0,256K) and all
 * of priv with patterns.  After fork():
 *   - the child fills shm[256K,512K) (the root must see it);
 *     shm[512K,1M) stays untouched (zero);
 *   - copy-on-write: the root rewrites priv[0,256K), the child rewrites
 *     priv[256K,512K); each must keep seeing the old data in the part
 *     the other one wrote, and priv[512K,1M) (written by nobody since
 *     the fork) must hold the original pattern in both.
 * After SIGTERM the root checks shm and priv, then writes a "ping" into
 * shm[768K,832K) and sends SIGTERM to the child.  The child checks its
 * view (including the ping: still shared after restore) and answers with
 * a "pong" in shm[896K,960K); the root, after reaping it, must see the
 * pong.  Both also check that the mappings are still rw-s / rw-p at the
 * same addresses (a mapping covering [addr, addr+1M)).
 */
#include "zdtm.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define KB 1024UL
#define SZ (1024 * KB)

static uint8_t *shm, *priv;

#define CHUNK (64 * KB)

/* Patterns are laid down in 64 KiB chunks, each seeded by (seed, offset),
 * so any aligned sub-range can be checked on its own. */
static uint64_t chunk_seed(uint64_t seed, size_t off)
{
	return seed * 4096 + off / CHUNK;
}

static void fill(uint8_t *m, size_t off, size_t len, uint64_t seed)
{
	for (size_t o = off; o < off + len; o += CHUNK)
		zdtm_fill(m + o, CHUNK, chunk_seed(seed, o));
}

/* check region [off, off+len) of m against pattern seed (0 = zeroes) */
static void expect(const char *name, uint8_t *m, size_t off, size_t len, uint64_t seed)
{
	for (size_t o = off; o < off + len; o += CHUNK) {
		size_t d = seed ? zdtm_check(m + o, CHUNK, chunk_seed(seed, o))
				: zdtm_check_zero(m + o, CHUNK);

		if (d != CHUNK) {
			if (seed)
				zdtm_fail("%s[%zuK,%zuK): differs at byte %zu (expected pattern %d)",
					  name, off / KB, (off + len) / KB, o + d, (int)seed);
			else
				zdtm_fail("%s[%zuK,%zuK): differs at byte %zu (expected zeroes)",
					  name, off / KB, (off + len) / KB, o + d);
			return;
		}
	}
}

static void expect_vma(void *addr, const char *perms, const char *name)
{
	struct zdtm_vma v;

	if (zdtm_find_vma(addr, &v))
		zdtm_fail("%s: no mapping at %p", name, addr);
	else if (v.start > (unsigned long)addr || v.end < (unsigned long)addr + SZ ||
		 strcmp(v.perms, perms))
		zdtm_fail("%s: mapping %lx-%lx %s, expected %p+1M %s", name, v.start, v.end,
			  v.perms, addr, perms);
}

static void child(void)
{
	zdtm_set_role("child");
	fill(shm, 256 * KB, 256 * KB, 3);
	fill(priv, 256 * KB, 256 * KB, 5);
	zdtm_tree_ready(NULL, 0);

	zdtm_wait_check();

	expect_vma(shm, "rw-s", "shm");
	expect_vma(priv, "rw-p", "priv");
	expect("shm", shm, 0, 256 * KB, 1);
	expect("shm", shm, 256 * KB, 256 * KB, 3);
	expect("shm", shm, 512 * KB, 256 * KB, 0);
	expect("shm (ping from the root)", shm, 768 * KB, 64 * KB, 6);
	expect("shm", shm, 832 * KB, 192 * KB, 0);
	expect("priv (the root's copy-on-write)", priv, 0, 256 * KB, 2);
	expect("priv", priv, 256 * KB, 256 * KB, 5);
	expect("priv", priv, 512 * KB, 512 * KB, 2);
	fill(shm, 896 * KB, 64 * KB, 7);
	zdtm_child_exit();
}

int main(int argc, char **argv)
{
	pid_t pid;

	zdtm_init(argc, argv);
	shm = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	priv = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED || priv == MAP_FAILED)
		zdtm_die("mmap: %m");
	fill(shm, 0, 256 * KB, 1);
	fill(priv, 0, SZ, 2);
	zdtm_tree_sync_init();
	pid = fork();
	if (pid < 0)
		zdtm_die("fork: %m");
	if (pid == 0)
		child();
	fill(priv, 0, 256 * KB, 4);
	if (zdtm_tree_wait(NULL, 0) != 1)
		zdtm_die("the child did not get ready");
	zdtm_ready();

	zdtm_wait_check();

	expect_vma(shm, "rw-s", "shm");
	expect_vma(priv, "rw-p", "priv");
	expect("shm", shm, 0, 256 * KB, 1);
	expect("shm (written by the child)", shm, 256 * KB, 256 * KB, 3);
	expect("shm", shm, 512 * KB, 512 * KB, 0);
	expect("priv", priv, 0, 256 * KB, 4);
	expect("priv (the child's copy-on-write)", priv, 256 * KB, 256 * KB, 2);
	expect("priv", priv, 512 * KB, 512 * KB, 2);
	fill(shm, 768 * KB, 64 * KB, 6);
	zdtm_stop_child(pid, "child");
	expect("shm (pong from the child)", shm, 896 * KB, 64 * KB, 7);
	expect("shm", shm, 960 * KB, 64 * KB, 0);
	expect("priv", priv, 0, 256 * KB, 4);
	zdtm_pass_or_fail();
}

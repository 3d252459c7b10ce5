/*
 * zdtm.h - tiny helper library for stasis ZDTM-style tests.
 *
 * Protocol (see ../README.md):
 *   zdtm_init(argc, argv);   set up SIGTERM handling and unbuffered stdout
 *   ... create the state to be checkpointed ...
 *   zdtm_ready();            prints "READY"; nothing else may be printed now
 *   zdtm_wait_check();       returns once SIGTERM has arrived (or loop on zdtm_stop)
 *   ... verify the state, zdtm_fail() for every difference ...
 *   zdtm_pass_or_fail();     prints "PASS" (exit 0) or exits 1
 */
#ifndef ZDTM_H
#define ZDTM_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Set to 1 by the SIGTERM handler. */
extern volatile sig_atomic_t zdtm_stop;
/* Number of times the SIGTERM handler ran. */
extern volatile sig_atomic_t zdtm_sigterm_count;

void zdtm_init(int argc, char **argv);
void zdtm_ready(void);
void zdtm_wait_check(void);
void zdtm_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int zdtm_failed(void);
void zdtm_pass_or_fail(void) __attribute__((noreturn));
/* Print "FAIL: <msg>" and exit 1 immediately (setup errors etc). */
void zdtm_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Print an arbitrary line (only allowed before READY or while checking). */
void zdtm_print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* --- deterministic data ------------------------------------------------ */

/* A strong 64-bit mixer (bijective). */
static inline uint64_t zdtm_mix64(uint64_t x)
{
	x ^= x >> 31;
	x *= 0x7fb5d329728ea185ULL;
	x ^= x >> 27;
	x *= 0x81dadef4bc2dd44dULL;
	x ^= x >> 33;
	return x;
}

/* 64-bit word number wi of the pattern stream "seed". */
static inline uint64_t zdtm_pattern_word(uint64_t seed, uint64_t wi)
{
	return zdtm_mix64(seed * 0x9e3779b97f4a7c15ULL + wi + 1);
}

/* Byte i of the pattern stream "seed" (little-endian bytes of the words). */
static inline uint8_t zdtm_pattern_byte(uint64_t seed, uint64_t i)
{
	return (uint8_t)(zdtm_pattern_word(seed, i / 8) >> (8 * (i % 8)));
}

/* Fill buf[0..len) with pattern "seed" (stream position 0 at buf). */
void zdtm_fill(void *buf, size_t len, uint64_t seed);
/* Check buf against pattern "seed"; returns len if equal, else the offset
 * of the first differing byte. */
size_t zdtm_check(const void *buf, size_t len, uint64_t seed);
/* Returns len if all bytes are zero, else the first non-zero offset. */
size_t zdtm_check_zero(const void *buf, size_t len);
/* FNV-1a style 64-bit hash, chainable via h (start with 0). */
uint64_t zdtm_hash(const void *buf, size_t len, uint64_t h);

/* --- /proc helpers ----------------------------------------------------- */

/* Read a whole file into buf (up to size bytes); returns length or -1. */
ssize_t zdtm_read_file(const char *path, void *buf, size_t size);

struct zdtm_vma {
	unsigned long start, end;
	char perms[5];		/* e.g. "rw-p" */
	unsigned long pgoff;	/* file offset in bytes */
	char name[256];		/* path or [special], "" for anonymous */
};
/* Find the /proc/self/maps entry containing addr; 0 on success, -1 if none. */
int zdtm_find_vma(const void *addr, struct zdtm_vma *vma);
/* Find the first /proc/self/maps entry with this name ("[vdso]"); 0/-1. */
int zdtm_find_vma_by_name(const char *name, struct zdtm_vma *vma);
/* Copy the "VmFlags:" value of the smaps entry starting at addr; 0/-1. */
int zdtm_vma_flags(const void *addr, char *buf, size_t size);

/* monotonic time in nanoseconds */
int64_t zdtm_now_ns(void);

/* --- process trees (see ../README.md, "Trees and threads") -------------- */

/* Tag this process' FAIL lines: "FAIL: [role] ..." (role "" = no tag). */
void zdtm_set_role(const char *role);

/* Set-up barrier for a tree: a pipe that every non-root process writes to
 * once it is set up, and that the root reads until EOF.  Call
 * zdtm_tree_sync_init() in the root before forking anything. */
void zdtm_tree_sync_init(void);
/* In a non-root process, once it is set up and has forked its own children:
 * write msg (len <= PIPE_BUF; NULL/0 writes one byte) and close both ends. */
void zdtm_tree_ready(const void *msg, size_t len);
/* In the root, after forking its children: close its ends' copies it does
 * not need, read until every process closed the write end (EOF), store up to
 * size bytes in buf (may be NULL) and return the total number of bytes read.
 * Nothing of the barrier is left open afterwards. */
size_t zdtm_tree_wait(void *buf, size_t size);

/* waitpid(pid, status, 0) retried on EINTR; returns pid, or -1 with errno. */
pid_t zdtm_waitpid(pid_t pid, int *status);
/* Reap pid and zdtm_fail() unless it exited with status code. */
void zdtm_expect_exit(pid_t pid, int code, const char *who);
/* kill(pid, SIGTERM), then zdtm_expect_exit(pid, 0, who). */
void zdtm_stop_child(pid_t pid, const char *who);
/* End a non-root process: exit(1) after any zdtm_fail(), else exit(0).
 * Prints nothing (PASS is the root's to print). */
void zdtm_child_exit(void) __attribute__((noreturn));
/* Describe a raw wait status ("exited with 3", "killed by signal 9"). */
const char *zdtm_wait_str(int status);

#endif

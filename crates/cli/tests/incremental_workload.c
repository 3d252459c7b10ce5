/* The workload of crates/cli/tests/incremental.rs: a process with two threads, a child,
 * shared anonymous memory and a private file mapping, whose memory changes by about 1 % of
 * its pages at each step, and which checks every page of it against what it must hold.
 *
 * usage: incremental_workload LOG CONTROL FILE
 *   LOG      lines are appended: "ready parent|child", "mutated parent|child N",
 *            "verify parent|child ok" or "verify ... BAD <region> page <i> (expected N)"
 *   CONTROL  holds the step count the test expects (read on SIGUSR2)
 *   FILE     a file of FILE_PAGES pages, mapped privately and written (copy-on-write)
 * SIGUSR1: one step of changes (each process its own memory; the parent the shared memory)
 * SIGUSR2: check every page against the step count in CONTROL.
 *
 * Page i of a region at step s holds a pattern of (region seed, i, g) where g counts the
 * steps t <= s that changed page i (i % 97 == t * 13 % 97: 1 page in 97 per step); in the
 * private and shared anonymous regions a page whose (g + i) % 5 == 0 is all zero, so steps
 * also turn pages to zero and zero pages to data. The regions are big enough that these
 * pages are most of the process's memory.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096
#define PRIV_PAGES 4096
#define SHM_PAGES 512
#define FILE_PAGES 64
#define CHILD_PAGES 512

static int log_fd;
static const char *control;
static const char *role = "parent";
static volatile uint64_t ticks;

static void say(const char *fmt, long a, long b)
{
    char line[256];
    int n = snprintf(line, sizeof line, fmt, role, a, b);
    if (write(log_fd, line, n) != n)
        _exit(3);
}

static unsigned gen(unsigned i, unsigned s)
{
    unsigned g = 0;
    for (unsigned t = 1; t <= s; t++)
        g += i % 97 == t * 13 % 97;
    return g;
}

static void pattern(uint8_t *page, unsigned seed, unsigned i, unsigned g, int zeros)
{
    if (zeros && (g + i) % 5 == 0) {
        memset(page, 0, PG);
        return;
    }
    uint64_t x = (uint64_t)seed << 40 ^ (uint64_t)i << 16 ^ g ^ 0x9e3779b97f4a7c15ull;
    for (int k = 0; k < PG / 8; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(page + k * 8, &x, 8);
    }
}

struct region {
    const char *name;
    uint8_t *mem;
    unsigned pages, seed;
    int zeros;
};

/* Writes the pages of `r` that step `s` changes (all of them for s == 0). */
static void write_step(struct region *r, unsigned s)
{
    for (unsigned i = 0; i < r->pages; i++)
        if (s == 0 || i % 97 == s * 13 % 97)
            pattern(r->mem + (size_t)i * PG, r->seed, i, gen(i, s), r->zeros);
}

/* The first page of `r` that does not hold what step `s` gives it, or -1. */
static long check(struct region *r, unsigned s)
{
    static uint8_t want[PG];
    for (unsigned i = 0; i < r->pages; i++) {
        pattern(want, r->seed, i, gen(i, s), r->zeros);
        if (memcmp(want, r->mem + (size_t)i * PG, PG))
            return i;
    }
    return -1;
}

static void *ticker(void *arg)
{
    (void)arg;
    for (;;) {
        ticks++;
        usleep(2000);
    }
    return NULL;
}

static void serve(struct region *regions, int n)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    unsigned step = 0;
    say("ready %s\n", 0, 0);
    for (;;) {
        int sig;
        if (sigwait(&set, &sig))
            continue;
        if (sig == SIGUSR1) {
            step++;
            for (int k = 0; k < n; k++)
                write_step(&regions[k], step);
            say("mutated %s %ld\n", step, 0);
        } else {
            char buf[32] = {0};
            int fd = open(control, O_RDONLY);
            if (fd < 0 || read(fd, buf, sizeof buf - 1) <= 0)
                _exit(4);
            close(fd);
            unsigned expect = atoi(buf);
            int bad = 0;
            for (int k = 0; k < n && !bad; k++) {
                long i = check(&regions[k], expect);
                if (i >= 0) {
                    char line[128];
                    snprintf(line, sizeof line, "verify %%s BAD %s page %%ld (step %%ld)\n",
                             regions[k].name);
                    say(line, i, expect);
                    bad = 1;
                }
            }
            if (step != expect)
                say("verify %s BAD step %ld, expected %ld\n", step, expect), bad = 1;
            if (!bad)
                say("verify %s ok\n", 0, 0);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    log_fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
    control = argv[2];
    int file = open(argv[3], O_RDWR);
    if (log_fd < 0 || file < 0)
        return 2;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);

    uint8_t *shm = mmap(NULL, (size_t)SHM_PAGES * PG, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED)
        return 2;
    struct region shared = {"shared", shm, SHM_PAGES, 2, 1};
    write_step(&shared, 0);

    pid_t child = fork();
    if (child < 0)
        return 2;
    if (child == 0) {
        role = "child";
        uint8_t *own = mmap(NULL, (size_t)CHILD_PAGES * PG, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (own == MAP_FAILED)
            _exit(2);
        struct region regions[] = {
            {"child-private", own, CHILD_PAGES, 4, 1},
            shared, /* read only here: the parent changes it */
        };
        write_step(&regions[0], 0);
        regions[1].pages = 0; /* checked by the parent, which changes it */
        serve(regions, 2);
    }

    uint8_t *priv = mmap(NULL, (size_t)PRIV_PAGES * PG, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *fmap = mmap(NULL, (size_t)FILE_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE,
                         file, 0);
    if (priv == MAP_FAILED || fmap == MAP_FAILED)
        return 2;
    struct region regions[] = {
        {"private", priv, PRIV_PAGES, 1, 1},
        shared,
        /* No zero pages here: a page not dumped comes back from the file. */
        {"file", fmap, FILE_PAGES, 3, 0},
    };
    write_step(&regions[0], 0);
    write_step(&regions[2], 0);
    pthread_t t1, t2;
    if (pthread_create(&t1, NULL, ticker, NULL) || pthread_create(&t2, NULL, ticker, NULL))
        return 2;
    serve(regions, 3);
    return 0;
}

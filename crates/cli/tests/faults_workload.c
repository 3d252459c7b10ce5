/* The program of crates/cli/tests/faults.rs: a small but representative process that checks
 * itself all the time, so that a dump that fails (or whose dumper is killed) at any point can
 * be seen to leave it running exactly as before.
 *
 * usage: faults_workload MIB LOG
 *
 * It holds MIB MiB of memory filled with a pattern (and its checksum), two threads that count
 * (each with values kept in registers, checked at every step), a child that echoes bytes
 * through a pair of pipes, a signal mask (SIGUSR2 and SIGWINCH blocked), and a file of its
 * own (LOG, also its stdout). Every 20 ms the main thread checks one part of the memory
 * against its pattern, the signal mask, its descriptors, a round trip through the child, and
 * that the threads' counters advance; then writes a line "ok ITER T1 T2" to LOG. On SIGUSR1
 * it checks the whole memory and writes "full ITER". Any failed check writes "FAIL what" and
 * exits with status 1. SIGTERM ends it (and its child) with status 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t counters[2];
static volatile sig_atomic_t full_check, stop;
static FILE *logf;
static uint64_t *mem;
static size_t words;

static void fail(const char *what)
{
    fprintf(logf, "FAIL %s (errno %d)\n", what, errno);
    fflush(logf);
    exit(1);
}

static uint64_t pattern(size_t i)
{
    return (uint64_t)i * 0x9e3779b97f4a7c15ull ^ 0x5bd1e995ull;
}

static void *counter(void *arg)
{
    long n = (long)arg;
    /* Values that live in registers across the loop: an injected call that left the
     * thread with other registers would break the invariant a == 3 * b + n. */
    uint64_t a = (uint64_t)n, b = 0;
    for (;;) {
        b += 1;
        a += 3;
        if (a != 3 * b + (uint64_t)n)
            fail("a counter thread's registers changed");
        counters[n] = b;
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void on_usr1(int sig)
{
    (void)sig;
    full_check = 1;
}

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static void check_memory(size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (mem[i] != pattern(i))
            fail("memory changed");
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    size_t mib = strtoul(argv[1], NULL, 10);
    logf = fopen(argv[2], "a");
    if (!logf)
        return 2;
    words = mib * (1 << 20) / sizeof(uint64_t);
    mem = malloc(words * sizeof(uint64_t));
    if (!mem)
        fail("malloc");
    for (size_t i = 0; i < words; i++)
        mem[i] = pattern(i);

    int down[2], up[2];
    if (pipe(down) || pipe(up))
        fail("pipe");
    pid_t child = fork();
    if (child < 0)
        fail("fork");
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(down[1]);
        close(up[0]);
        char c;
        while (read(down[0], &c, 1) == 1) {
            c = (char)(c + 1);
            if (write(up[1], &c, 1) != 1)
                _exit(1);
        }
        _exit(0);
    }
    close(down[0]);
    close(up[1]);

    sigset_t mask, now;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR2);
    sigaddset(&mask, SIGWINCH);
    if (sigprocmask(SIG_BLOCK, &mask, NULL))
        fail("sigprocmask");
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);

    pthread_t t[2];
    for (long n = 0; n < 2; n++)
        if (pthread_create(&t[n], NULL, counter, (void *)n))
            fail("pthread_create");

    size_t chunk = words / 64 + 1, at = 0;
    uint64_t last[2] = {0, 0};
    unsigned char c = 0;
    for (uint64_t iter = 1; !stop; iter++) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        size_t to = at + chunk < words ? at + chunk : words;
        check_memory(at, to);
        at = to == words ? 0 : to;
        if (full_check) {
            full_check = 0;
            check_memory(0, words);
            fprintf(logf, "full %llu\n", (unsigned long long)iter);
        }
        if (sigprocmask(SIG_BLOCK, NULL, &now))
            fail("sigprocmask");
        for (int s = 1; s < 32; s++)
            if (sigismember(&now, s) != sigismember(&mask, s))
                fail("the signal mask changed");
        int fds[] = {down[1], up[0], fileno(logf)};
        for (unsigned i = 0; i < sizeof fds / sizeof fds[0]; i++)
            if (fcntl(fds[i], F_GETFD) < 0)
                fail("a descriptor is gone");
        unsigned char got;
        c++;
        ssize_t r;
        while ((r = write(down[1], &c, 1)) < 0 && errno == EINTR)
            ;
        if (r != 1)
            fail("write to the child");
        while ((r = read(up[0], &got, 1)) < 0 && errno == EINTR)
            ;
        if (r != 1 || got != (unsigned char)(c + 1))
            fail("the child's echo");
        /* The threads count every 2 ms; 20 ms later both have moved (generous: only
         * checked every 50 iterations (1 s), a loaded machine may not run them for a while). */
        if (iter % 50 == 0) {
            for (int n = 0; n < 2; n++) {
                if (counters[n] == last[n])
                    fail("a counter thread stopped");
                last[n] = counters[n];
            }
        }
        fprintf(logf, "ok %llu %llu %llu\n", (unsigned long long)iter,
                (unsigned long long)counters[0], (unsigned long long)counters[1]);
        fflush(logf);
    }
    close(down[1]);
    waitpid(child, NULL, 0);
    return 0;
}

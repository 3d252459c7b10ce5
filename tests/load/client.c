/*
 * client.c - the C client of crates/daemon/tests/load.rs: self-dumps through libstasis into
 * the directory given, trying again (after a short random pause) while the daemon answers
 * STASIS_E_BUSY, at most TRIES times in all; then exits.
 *
 *   client DIR TRIES
 *
 * Prints one line:
 *   "DUMPED <pid> <busy answers>"                          the dump was written
 *   "ERROR <code> <busy answers> <stasis_strerror> | <stasis_last_error>"  it failed (the last
 *                                                          code; STASIS_E_BUSY after TRIES)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "stasis.h"

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s DIR TRIES\n", argv[0]);
		return 2;
	}
	setvbuf(stdout, NULL, _IONBF, 0);
	int tries = atoi(argv[2]);
	int dir = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		printf("SETUP-ERROR open %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	srand((unsigned)getpid());
	int busy = 0, r = STASIS_E_BUSY;
	for (int i = 0; i < tries; i++) {
		r = stasis_dump_self(dir, NULL);
		if (r != STASIS_E_BUSY)
			break;
		busy++;
		/* 20-120 ms: the served requests end meanwhile. */
		struct timespec ts = { 0, (20 + rand() % 100) * 1000000L };
		nanosleep(&ts, NULL);
	}
	if (r == 0)
		printf("DUMPED %d %d\n", (int)getpid(), busy);
	else if (r == 1)
		printf("RESTORED %d %d\n", (int)getpid(), busy);
	else
		printf("ERROR %d %d %s | %s\n", r, busy, stasis_strerror(r), stasis_last_error());
	close(dir);
	return r < 0 ? 1 : 0;
}

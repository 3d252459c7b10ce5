/*
 * client.c - the C client of crates/daemon/tests/denial_of_service.rs: one self-dump through
 * libstasis into the directory given, then exits.
 *
 *   client DIR
 *
 * Prints one line:
 *   "DUMPED <pid>"                              the dump was written
 *   "ERROR <code> <stasis_strerror> | <stasis_last_error>"  it failed (a negative code)
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

#include "stasis.h"

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	setvbuf(stdout, NULL, _IONBF, 0);
	int dir = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		printf("SETUP-ERROR open %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	int r = stasis_dump_self(dir, NULL);
	if (r == 0)
		printf("DUMPED %d\n", (int)getpid());
	else if (r == 1)
		printf("RESTORED %d\n", (int)getpid());
	else
		printf("ERROR %d %s | %s\n", r, stasis_strerror(r), stasis_last_error());
	close(dir);
	return r < 0 ? 1 : 0;
}

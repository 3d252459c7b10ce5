/*
 * selfdump: checkpoints itself with libstasis.
 *
 *   selfdump IMAGES_DIR [--kill]
 *
 * Fills 64 MiB with a pattern, counts, calls stasis_dump_self() on IMAGES_DIR, says whether
 * it was dumped (the original) or restored (a process restored from the images), counts on
 * and checks that the pattern is intact. Exit status: 0 ok, 1 stasis error, 2 usage,
 * 3 memory mismatch.
 *
 * Build (see include/stasis.h):
 *   gcc -I include examples/c/selfdump.c -L target/release -lstasis -o selfdump
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stasis.h"

#define PATTERN_BYTES ((size_t)64 << 20)

static uint64_t pattern(size_t i)
{
	return (i * 0x9E3779B97F4A7C15ull) ^ 0x5354415349530000ull;
}

int main(int argc, char **argv)
{
	if (argc < 2 || (argc > 2 && strcmp(argv[2], "--kill") != 0) || argc > 3) {
		fprintf(stderr, "usage: %s IMAGES_DIR [--kill]\n", argv[0]);
		return 2;
	}
	int dir = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		perror(argv[1]);
		return 2;
	}

	size_t words = PATTERN_BYTES / sizeof(uint64_t);
	uint64_t *mem = malloc(PATTERN_BYTES);
	if (!mem) {
		perror("malloc");
		return 2;
	}
	for (size_t i = 0; i < words; i++)
		mem[i] = pattern(i);

	unsigned count = 0;
	for (; count < 3; count++)
		printf("count %u\n", count);
	/* Flush before the checkpoint: buffered output would otherwise be printed by the
	 * original and again by every restored copy. */
	fflush(stdout);

	struct stasis_dump_opts opts = { 0 };
	if (argc > 2)
		opts.flags |= STASIS_DUMP_KILL;
	int r = stasis_dump_self(dir, &opts);
	if (r < 0) {
		fprintf(stderr, "selfdump: stasis_dump_self failed: %s (%d): %s\n",
			stasis_strerror(r), r, stasis_last_error());
		return 1;
	}
	printf("%s (pid %d)\n", r == 0 ? "dumped" : "restored", (int)getpid());

	for (; count < 6; count++)
		printf("count %u\n", count);

	for (size_t i = 0; i < words; i++) {
		if (mem[i] != pattern(i)) {
			printf("memory pattern MISMATCH at byte %zu\n", i * sizeof(uint64_t));
			return 3;
		}
	}
	printf("memory pattern ok (%zu MiB)\n", PATTERN_BYTES >> 20);
	free(mem);
	close(dir);
	return 0;
}

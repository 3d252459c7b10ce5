/*
 * mem_stack: a deep stack.
 *
 * recurse() descends DEPTH frames; every frame keeps a local array filled
 * with a per-depth pattern, its address is recorded in a global table,
 * and a per-frame value stays live across the call (in a callee-saved
 * register that the next frame spills to the stack).  At the bottom the
 * test becomes READY and waits for SIGTERM; then every frame checks its
 * array and its address while unwinding and folds its value into the
 * returned hash chain, which main() compares with the expected value.
 */
#include "zdtm.h"

#define DEPTH 2000
#define WORDS 64

static uint64_t *frame_addr[DEPTH];

__attribute__((noinline, noipa)) static uint64_t recurse(int depth, uint64_t salt)
{
	uint64_t local[WORDS];
	uint64_t mine = zdtm_mix64(salt + depth), below;

	zdtm_fill(local, sizeof(local), depth);
	frame_addr[depth] = local;

	if (depth + 1 < DEPTH) {
		below = recurse(depth + 1, salt * 3 + 1);
	} else {
		zdtm_ready();
		zdtm_wait_check();
		below = 0;
	}

	if (zdtm_check(local, sizeof(local), depth) != sizeof(local))
		zdtm_fail("frame %d: local array differs", depth);
	if (frame_addr[depth] != local)
		zdtm_fail("frame %d: local array moved from %p to %p", depth,
			  (void *)frame_addr[depth], (void *)local);
	return zdtm_mix64(below ^ mine);
}

int main(int argc, char **argv)
{
	uint64_t expect = 0, salt = 5, salts[DEPTH], got;

	zdtm_init(argc, argv);
	got = recurse(0, salt);

	for (int d = 0; d < DEPTH; d++) {
		salts[d] = salt;
		salt = salt * 3 + 1;
	}
	for (int d = DEPTH - 1; d >= 0; d--)
		expect = zdtm_mix64(expect ^ zdtm_mix64(salts[d] + d));
	if (got != expect)
		zdtm_fail("hash of the call chain %#llx, expected %#llx",
			  (unsigned long long)got, (unsigned long long)expect);
	zdtm_pass_or_fail();
}

/*
 * busy_loop: a process that is running (never blocked in a syscall) when
 * it is dumped.
 *
 * After READY the main loop advances four independent 64-bit LCGs, each
 * with a running sum of its outputs, plus a step counter.  Lanes 0-2 and
 * the counter live in registers; lane 3 lives in (volatile) memory, so it
 * is loaded and stored every step.  On SIGTERM the expected state after
 * n steps is recomputed in closed form (an LCG step plus the running sum
 * is an affine map, so its n-th power is computed by repeated squaring)
 * and compared: a lost or corrupted register or memory word, or a stale
 * memory page, shows up as a mismatch, since every later step depends on
 * it.
 */
#include "zdtm.h"

#include <stdint.h>

#define NLANES 4
static const uint64_t A[NLANES] = {
	6364136223846793005ULL, 2862933555777941757ULL,
	3202034522624059733ULL, 3935559000370003845ULL,
};
static const uint64_t C[NLANES] = {
	1442695040888963407ULL, 3037000493ULL, 0x9e3779b97f4a7c15ULL, 7,
};
static const uint64_t SEED[NLANES] = { 1, 0x1234567890abcdefULL, 42, 0xdeadbeef };

static volatile uint64_t mem_x3 = 0xdeadbeef, mem_s3;	/* lane 3: memory */

/* 3x3 matrices over Z/2^64 acting on (x, sum, 1) */
typedef struct { uint64_t m[3][3]; } mat3;

static mat3 mul(const mat3 *p, const mat3 *q)
{
	mat3 r;

	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 3; j++) {
			r.m[i][j] = 0;
			for (int k = 0; k < 3; k++)
				r.m[i][j] += p->m[i][k] * q->m[k][j];
		}
	return r;
}

/* state of lane k after n steps: x = a*x + c; s += x */
static void jump(int k, uint64_t n, uint64_t *x, uint64_t *s)
{
	mat3 step = { { { A[k], 0, C[k] }, { A[k], 1, C[k] }, { 0, 0, 1 } } };
	mat3 r = { { { 1, 0, 0 }, { 0, 1, 0 }, { 0, 0, 1 } } };

	for (; n; n >>= 1) {
		if (n & 1)
			r = mul(&r, &step);
		step = mul(&step, &step);
	}
	*x = r.m[0][0] * SEED[k] + r.m[0][2];
	*s = r.m[1][0] * SEED[k] + r.m[1][2];
}

int main(int argc, char **argv)
{
	uint64_t x0 = SEED[0], x1 = SEED[1], x2 = SEED[2];
	uint64_t s0 = 0, s1 = 0, s2 = 0, n = 0;
	uint64_t got_x[NLANES], got_s[NLANES];

	zdtm_init(argc, argv);
	zdtm_ready();

	while (!zdtm_stop) {
		x0 = A[0] * x0 + C[0]; s0 += x0;
		x1 = A[1] * x1 + C[1]; s1 += x1;
		x2 = A[2] * x2 + C[2]; s2 += x2;
		mem_x3 = A[3] * mem_x3 + C[3];
		mem_s3 += mem_x3;
		n++;
	}

	got_x[0] = x0; got_x[1] = x1; got_x[2] = x2; got_x[3] = mem_x3;
	got_s[0] = s0; got_s[1] = s1; got_s[2] = s2; got_s[3] = mem_s3;
	for (int k = 0; k < NLANES; k++) {
		uint64_t ex, es;

		jump(k, n, &ex, &es);
		if (ex != got_x[k] || es != got_s[k])
			zdtm_fail("lane %d after %llu steps: x=%#llx sum=%#llx, expected x=%#llx sum=%#llx",
				  k, (unsigned long long)n, (unsigned long long)got_x[k],
				  (unsigned long long)got_s[k], (unsigned long long)ex,
				  (unsigned long long)es);
	}
	zdtm_pass_or_fail();
}

/*
 * regs_fpu: FPU / SSE / AVX / AVX-512 register state of a process caught
 * in user mode.
 *
 * An inline asm block loads distinct 128/256/512-bit patterns into all
 * vector registers (xmm0-15 with SSE only, ymm0-15 with AVX, zmm0-31 and
 * the opmask registers k0-7 with AVX-512F), pushes 8 distinct long
 * doubles onto the x87 register stack (st0-st7), sets a non-default x87
 * control word (round toward zero, double precision) and a non-default
 * MXCSR (FTZ, DAZ, round toward zero), then spins until the SIGTERM
 * handler sets zdtm_stop (the handler gets a fresh FPU state; sigreturn
 * restores ours).  Then everything is stored to memory, the original
 * control words are restored, and all of it is compared with what was
 * loaded: the whole extended state must survive dump and restore.
 * By default the widest available register set is used; argv[1] = "sse"
 * or "avx" restricts it.
 */
#include "zdtm.h"

#include <inttypes.h>
#include <string.h>

#define MXCSR_NEW 0xffc0	/* default 0x1f80 | FTZ | DAZ | RC=toward zero */
#define FCW_NEW 0x0e7f		/* default 0x037f, RC=toward zero, PC=double */

/* all of these are accessed from the asm blocks by name */
#define USED __attribute__((used))
static USED uint8_t vin[32][64] __attribute__((aligned(64)));
static USED uint8_t vout[32][64] __attribute__((aligned(64)));
static USED uint16_t kin[8], kout[8];
static USED long double x87in[8], x87out[8];
static USED uint32_t mxcsr_new = MXCSR_NEW, mxcsr_out, mxcsr_saved;
static USED uint16_t fcw_new = FCW_NEW, fcw_out, fcw_saved;
static USED uint16_t fsw_before, fsw_after;
static USED uint64_t spins;

#define R8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define R16(X) R8(X) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define R32(X) R16(X) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) \
	X(24) X(25) X(26) X(27) X(28) X(29) X(30) X(31)

/* x87 control word + MXCSR + st0-7, before and after the spin loop */
#define FP_LOAD                                            \
	"fnstcw fcw_saved(%%rip)\n\t"                      \
	"stmxcsr mxcsr_saved(%%rip)\n\t"                   \
	"fldcw fcw_new(%%rip)\n\t"                         \
	"ldmxcsr mxcsr_new(%%rip)\n\t"                     \
	"fldt x87in+0(%%rip)\n\t"                          \
	"fldt x87in+16(%%rip)\n\t"                         \
	"fldt x87in+32(%%rip)\n\t"                         \
	"fldt x87in+48(%%rip)\n\t"                         \
	"fldt x87in+64(%%rip)\n\t"                         \
	"fldt x87in+80(%%rip)\n\t"                         \
	"fldt x87in+96(%%rip)\n\t"                         \
	"fldt x87in+112(%%rip)\n\t"                        \
	"fnstsw fsw_before(%%rip)\n\t"
#define SPIN                                               \
	"1:\n\t"                                           \
	"incq spins(%%rip)\n\t"                            \
	"cmpl $0, zdtm_stop(%%rip)\n\t"                    \
	"je 1b\n\t"
#define FP_STORE                                           \
	"fnstsw fsw_after(%%rip)\n\t"                      \
	"fstpt x87out+112(%%rip)\n\t"                      \
	"fstpt x87out+96(%%rip)\n\t"                       \
	"fstpt x87out+80(%%rip)\n\t"                       \
	"fstpt x87out+64(%%rip)\n\t"                       \
	"fstpt x87out+48(%%rip)\n\t"                       \
	"fstpt x87out+32(%%rip)\n\t"                       \
	"fstpt x87out+16(%%rip)\n\t"                       \
	"fstpt x87out+0(%%rip)\n\t"                        \
	"fnstcw fcw_out(%%rip)\n\t"                        \
	"stmxcsr mxcsr_out(%%rip)\n\t"                     \
	"fldcw fcw_saved(%%rip)\n\t"                       \
	"ldmxcsr mxcsr_saved(%%rip)\n\t"

#define X87_CLOBBERS "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)"
#define XMM_CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", \
	"xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

#define SSE_LD(n) "movdqu vin+" #n "*64(%%rip), %%xmm" #n "\n\t"
#define SSE_ST(n) "movdqu %%xmm" #n ", vout+" #n "*64(%%rip)\n\t"
static void run_sse(void)
{
	asm volatile(R16(SSE_LD) FP_LOAD SPIN FP_STORE R16(SSE_ST)
		     ::: XMM_CLOBBERS, X87_CLOBBERS, "memory", "cc");
}

#define AVX_LD(n) "vmovdqu vin+" #n "*64(%%rip), %%ymm" #n "\n\t"
#define AVX_ST(n) "vmovdqu %%ymm" #n ", vout+" #n "*64(%%rip)\n\t"
__attribute__((target("avx"))) static void run_avx(void)
{
	asm volatile(R16(AVX_LD) FP_LOAD SPIN FP_STORE R16(AVX_ST) "vzeroupper\n\t"
		     ::: XMM_CLOBBERS, X87_CLOBBERS, "memory", "cc");
}

#define Z_LD(n) "vmovdqu64 vin+" #n "*64(%%rip), %%zmm" #n "\n\t"
#define Z_ST(n) "vmovdqu64 %%zmm" #n ", vout+" #n "*64(%%rip)\n\t"
#define K_LD(n) "kmovw kin+" #n "*2(%%rip), %%k" #n "\n\t"
#define K_ST(n) "kmovw %%k" #n ", kout+" #n "*2(%%rip)\n\t"
__attribute__((target("avx512f"))) static void run_avx512(void)
{
	asm volatile(R32(Z_LD) R8(K_LD) FP_LOAD SPIN FP_STORE R32(Z_ST) R8(K_ST)
		     "vzeroupper\n\t"
		     ::: XMM_CLOBBERS, "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21",
		       "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28",
		       "xmm29", "xmm30", "xmm31", "k0", "k1", "k2", "k3", "k4", "k5", "k6",
		       "k7", X87_CLOBBERS, "memory", "cc");
}

int main(int argc, char **argv)
{
	const char *mode, *want;
	int nvec, vlen;

	zdtm_init(argc, argv);
	__builtin_cpu_init();
	/* optional argv[1] ("sse" or "avx") limits the register set used */
	want = argc > 1 ? argv[1] : "avx512f";
	if (__builtin_cpu_supports("avx512f") && !strcmp(want, "avx512f")) {
		mode = "avx512f"; nvec = 32; vlen = 64;
	} else if (__builtin_cpu_supports("avx") && strcmp(want, "sse")) {
		mode = "avx"; nvec = 16; vlen = 32;
	} else {
		mode = "sse"; nvec = 16; vlen = 16;
	}

	zdtm_fill(vin, sizeof(vin), 0xf9);
	memset(vout, 0, sizeof(vout));
	for (int i = 0; i < 8; i++) {
		kin[i] = (uint16_t)zdtm_pattern_word(0x6b, i);
		x87in[i] = (i + 1) * 3.14159265358979323846264338327950288L / 7 + i * 1e-19L;
	}

	zdtm_ready();
	if (nvec == 32)
		run_avx512();
	else if (vlen == 32)
		run_avx();
	else
		run_sse();

	for (int r = 0; r < nvec; r++)
		for (int b = 0; b < vlen; b++)
			if (vin[r][b] != vout[r][b]) {
				zdtm_fail("[%s] vector register %d byte %d: %#x, expected %#x", mode,
					  r, b, vout[r][b], vin[r][b]);
				break;
			}
	if (nvec == 32)
		for (int k = 0; k < 8; k++)
			if (kin[k] != kout[k])
				zdtm_fail("[%s] k%d = %#x, expected %#x", mode, k, kout[k], kin[k]);
	for (int i = 0; i < 8; i++)
		if (memcmp(&x87in[i], &x87out[i], 10))
			zdtm_fail("[%s] x87 st(%d) = %La, expected %La", mode, 7 - i, x87out[i],
				  x87in[i]);
	if (fcw_out != FCW_NEW)
		zdtm_fail("[%s] x87 control word %#x, expected %#x", mode, fcw_out, FCW_NEW);
	if (fsw_after != fsw_before)
		zdtm_fail("[%s] x87 status word %#x, expected %#x", mode, fsw_after, fsw_before);
	if (mxcsr_out != MXCSR_NEW)
		zdtm_fail("[%s] MXCSR %#x, expected %#x", mode, mxcsr_out, MXCSR_NEW);
	zdtm_pass_or_fail();
}

/*
 * regs_gpr: general purpose registers of a process caught in user mode.
 *
 * An inline asm block loads distinct 64-bit constants into all 15 GPRs
 * other than rsp (rax, rbx, rcx, rdx, rsi, rdi, rbp, r8-r15), then spins
 * until the SIGTERM handler sets zdtm_stop.  Each loop iteration
 * increments rax and a counter in memory, so a changing register is
 * checked too.  The dump will almost certainly find the process inside
 * this loop; every register must come back exactly.  (The SIGTERM
 * handler itself runs on a signal frame, and sigreturn restores the
 * registers.)  After the loop all registers are stored to memory and
 * compared with the constants; rax must equal its constant plus the
 * iteration count.
 */
#include "zdtm.h"

#include <inttypes.h>

/* register, index into regs_out, initial value */
#define GPRS(X)                                   \
	X(rax, 0, 0x0123456789abcdef)             \
	X(rbx, 1, 0x1b1b2b2b3b3b4b4b)             \
	X(rcx, 2, 0xc2c3c4c5c6c7c8c9)             \
	X(rdx, 3, 0xd0d1d2d3d4d5d6d7)             \
	X(rsi, 4, 0x5151515100000001)             \
	X(rdi, 5, 0xd1d1d1d1fffffffe)             \
	X(rbp, 6, 0xbabababa12345678)             \
	X(r8, 7, 0x8888888877777777)              \
	X(r9, 8, 0x9999999966666666)              \
	X(r10, 9, 0x1010101055555555)             \
	X(r11, 10, 0x1111111144444444)            \
	X(r12, 11, 0x1212121233333333)            \
	X(r13, 12, 0x1313131322222222)            \
	X(r14, 13, 0x1414141411111111)            \
	X(r15, 14, 0xf0e1d2c3b4a59687)
#define NREGS 15

#define NAME(reg, idx, val) #reg,
#define VALUE(reg, idx, val) val##ULL,
#define LOAD(reg, idx, val) "movabs $" #val ", %%" #reg "\n\t"
#define STORE(reg, idx, val) "movq %%" #reg ", regs_out+" #idx "*8(%%rip)\n\t"

static const char *names[NREGS] = { GPRS(NAME) };
static const uint64_t expected[NREGS] = { GPRS(VALUE) };
static uint64_t regs_out[NREGS] __attribute__((used));
static uint64_t saved_rbp __attribute__((used));
static uint64_t spins __attribute__((used));

int main(int argc, char **argv)
{
	zdtm_init(argc, argv);
	zdtm_ready();

	asm volatile(
		/* rbp may be the frame pointer: keep it in memory meanwhile */
		"movq %%rbp, saved_rbp(%%rip)\n\t"
		GPRS(LOAD)
		"1:\n\t"
		"incq %%rax\n\t"
		"incq spins(%%rip)\n\t"
		"cmpl $0, zdtm_stop(%%rip)\n\t"
		"je 1b\n\t"
		GPRS(STORE)
		"movq saved_rbp(%%rip), %%rbp\n\t"
		:
		:
		: "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",
		  "r12", "r13", "r14", "r15", "memory", "cc");

	for (int i = 0; i < NREGS; i++) {
		uint64_t want = expected[i] + (i == 0 ? spins : 0);

		if (regs_out[i] != want)
			zdtm_fail("%s = %#018" PRIx64 ", expected %#018" PRIx64, names[i],
				  regs_out[i], want);
	}
	zdtm_pass_or_fail();
}

/*
 * tls: thread-local storage and the FS/GS segment bases.
 *
 * An initialized (.tdata) and a zero-initialized (.tbss) __thread
 * variable are modified; the FS base (the thread pointer glibc uses for
 * TLS) is saved, and the GS base is set with arch_prctl(ARCH_SET_GS) to
 * a buffer with a known first word.  On SIGTERM: the TLS variables must
 * hold their values at the same addresses, ARCH_GET_FS/ARCH_GET_GS must
 * return the same bases, and the bases must really be in effect: %fs:0
 * is glibc's TCB self pointer (== the FS base) and %gs:0 / %gs:8 must
 * read the buffer.
 */
#include "zdtm.h"

#include <asm/prctl.h>
#include <inttypes.h>
#include <sys/syscall.h>
#include <unistd.h>

static __thread uint64_t tls_data[4] = { 1, 2, 3, 4 };
static __thread uint64_t tls_bss[64];
static uint64_t gs_area[2] = { 0x6a6b6c6d6e6f7071ULL, 0x0102030405060708ULL };

static unsigned long get_base(int code)
{
	unsigned long base = 0;

	if (syscall(SYS_arch_prctl, code, &base))
		zdtm_fail("arch_prctl(%#x): %m", code);
	return base;
}

int main(int argc, char **argv)
{
	unsigned long fs_before, gs_before, fs_after, gs_after;
	uint64_t *data_addr = tls_data, *bss_addr = tls_bss, fs0, gs0, gs8;

	zdtm_init(argc, argv);
	zdtm_fill(tls_data, sizeof(tls_data), 7);
	zdtm_fill(tls_bss, sizeof(tls_bss), 8);
	if (syscall(SYS_arch_prctl, ARCH_SET_GS, (unsigned long)gs_area))
		zdtm_die("ARCH_SET_GS: %m");
	fs_before = get_base(ARCH_GET_FS);
	gs_before = get_base(ARCH_GET_GS);
	if (gs_before != (unsigned long)gs_area)
		zdtm_die("GS base %#lx, expected %p", gs_before, (void *)gs_area);

	zdtm_ready();
	zdtm_wait_check();

	fs_after = get_base(ARCH_GET_FS);
	gs_after = get_base(ARCH_GET_GS);
	if (fs_after != fs_before)
		zdtm_fail("FS base %#lx, expected %#lx", fs_after, fs_before);
	if (gs_after != gs_before)
		zdtm_fail("GS base %#lx, expected %#lx", gs_after, gs_before);

	asm volatile("movq %%fs:0, %0" : "=r"(fs0));
	asm volatile("movq %%gs:0, %0\n\tmovq %%gs:8, %1" : "=r"(gs0), "=r"(gs8) : : "memory");
	if (fs0 != fs_before)
		zdtm_fail("%%fs:0 = %#" PRIx64 ", expected the FS base %#lx", fs0, fs_before);
	if (gs0 != gs_area[0] || gs8 != gs_area[1])
		zdtm_fail("%%gs:0/8 = %#" PRIx64 "/%#" PRIx64 ", expected %#" PRIx64 "/%#" PRIx64,
			  gs0, gs8, gs_area[0], gs_area[1]);

	if (tls_data != data_addr || tls_bss != bss_addr)
		zdtm_fail("TLS variables moved: %p/%p, were %p/%p", (void *)tls_data,
			  (void *)tls_bss, (void *)data_addr, (void *)bss_addr);
	if (zdtm_check(tls_data, sizeof(tls_data), 7) != sizeof(tls_data))
		zdtm_fail("initialized __thread variable differs");
	if (zdtm_check(tls_bss, sizeof(tls_bss), 8) != sizeof(tls_bss))
		zdtm_fail("zero-initialized __thread variable differs");
	zdtm_pass_or_fail();
}

/*
 * creds: user/group ids, supplementary groups, capabilities and related
 * per-process security flags.  Must be started as root.
 *
 * Before READY, in this order: the bounding set loses CAP_SYS_BOOT and
 * CAP_SYS_MODULE, PR_SET_KEEPCAPS, setgroups({100, 200}),
 * setresgid(1001, 1002, 1003), setresuid(2001, 2002, 2003) (keeps the
 * permitted set thanks to KEEPCAPS), capset() to effective = permitted =
 * inheritable = {CAP_NET_BIND_SERVICE} (raw syscall, version 3), the same
 * capability raised in the ambient set, PR_SET_NO_NEW_PRIVS, and
 * PR_SET_DUMPABLE 1 (the uid change cleared it).
 * On SIGTERM all of it must be exactly the same: getresuid/getresgid,
 * fsuid/fsgid, getgroups, capget, the bounding and ambient sets,
 * securebits (incl. keep-caps), no_new_privs and dumpable.
 */
#include "zdtm.h"

#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAXCAP 64

struct creds {
	uid_t r, e, s, fs;
	gid_t rg, eg, sg, fsg;
	int ngroups;
	gid_t groups[64];
	struct __user_cap_data_struct cap[_LINUX_CAPABILITY_U32S_3];
	int bset[MAXCAP], amb[MAXCAP];
	int securebits, keepcaps, nnp, dumpable;
};

static int last_cap = 40;

static int capget_self(struct __user_cap_data_struct *d)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };

	return syscall(SYS_capget, &h, d);
}

static void take(struct creds *c)
{
	memset(c, 0, sizeof(*c));
	getresuid(&c->r, &c->e, &c->s);
	getresgid(&c->rg, &c->eg, &c->sg);
	c->fs = setfsuid(-1);
	c->fsg = setfsgid(-1);
	c->ngroups = getgroups(64, c->groups);
	if (capget_self(c->cap))
		zdtm_fail("capget: %m");
	for (int i = 0; i <= last_cap && i < MAXCAP; i++) {
		c->bset[i] = prctl(PR_CAPBSET_READ, i, 0, 0, 0);
		c->amb[i] = prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, i, 0, 0);
	}
	c->securebits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	c->keepcaps = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
	c->nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
	c->dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
}

int main(int argc, char **argv)
{
	const gid_t groups[] = { 100, 200 };
	const uint32_t cap = 1u << CAP_NET_BIND_SERVICE;
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
	static struct creds before, after;
	char buf[16];

	zdtm_init(argc, argv);
	if (getuid() != 0)
		zdtm_die("must run as root");
	if (zdtm_read_file("/proc/sys/kernel/cap_last_cap", buf, sizeof(buf) - 1) > 0)
		last_cap = atoi(buf);

	if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) ||
	    prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE, 0, 0, 0))
		zdtm_die("PR_CAPBSET_DROP: %m");
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
		zdtm_die("PR_SET_KEEPCAPS: %m");
	if (setgroups(2, groups) || setresgid(1001, 1002, 1003) || setresuid(2001, 2002, 2003))
		zdtm_die("setgroups/setresgid/setresuid: %m");
	memset(d, 0, sizeof(d));
	d[0].effective = d[0].permitted = d[0].inheritable = cap;
	if (syscall(SYS_capset, &h, d))
		zdtm_die("capset: %m");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		zdtm_die("PR_CAP_AMBIENT_RAISE: %m");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_DUMPABLE, 1, 0, 0, 0))
		zdtm_die("prctl: %m");

	take(&before);
	if (before.e != 2002 || before.eg != 1002 || before.ngroups != 2 ||
	    before.cap[0].effective != cap || before.cap[0].permitted != cap ||
	    before.cap[1].permitted || !before.amb[CAP_NET_BIND_SERVICE] ||
	    before.bset[CAP_SYS_BOOT] || !before.bset[CAP_CHOWN] || before.nnp != 1 ||
	    before.dumpable != 1 || before.keepcaps != 1)
		zdtm_die("credentials before READY are not as intended");

	zdtm_ready();
	zdtm_wait_check();

	take(&after);
	if (after.r != before.r || after.e != before.e || after.s != before.s || after.fs != before.fs)
		zdtm_fail("uids r/e/s/fs %d/%d/%d/%d, expected %d/%d/%d/%d", after.r, after.e,
			  after.s, after.fs, before.r, before.e, before.s, before.fs);
	if (after.rg != before.rg || after.eg != before.eg || after.sg != before.sg ||
	    after.fsg != before.fsg)
		zdtm_fail("gids r/e/s/fs %d/%d/%d/%d, expected %d/%d/%d/%d", after.rg, after.eg,
			  after.sg, after.fsg, before.rg, before.eg, before.sg, before.fsg);
	if (after.ngroups != before.ngroups ||
	    memcmp(after.groups, before.groups, sizeof(gid_t) * (before.ngroups > 0 ? before.ngroups : 0)))
		zdtm_fail("supplementary groups differ (%d groups, first %d)", after.ngroups,
			  after.ngroups > 0 ? (int)after.groups[0] : -1);
	for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
		if (memcmp(&after.cap[i], &before.cap[i], sizeof(after.cap[i])))
			zdtm_fail("capabilities word %d: eff %#x perm %#x inh %#x, expected %#x %#x %#x",
				  i, after.cap[i].effective, after.cap[i].permitted,
				  after.cap[i].inheritable, before.cap[i].effective,
				  before.cap[i].permitted, before.cap[i].inheritable);
	for (int i = 0; i <= last_cap && i < MAXCAP; i++) {
		if (after.bset[i] != before.bset[i])
			zdtm_fail("bounding set: capability %d is %d, expected %d", i, after.bset[i],
				  before.bset[i]);
		if (after.amb[i] != before.amb[i])
			zdtm_fail("ambient set: capability %d is %d, expected %d", i, after.amb[i],
				  before.amb[i]);
	}
	if (after.securebits != before.securebits || after.keepcaps != before.keepcaps)
		zdtm_fail("securebits %#x keepcaps %d, expected %#x %d", after.securebits,
			  after.keepcaps, before.securebits, before.keepcaps);
	if (after.nnp != before.nnp)
		zdtm_fail("no_new_privs %d, expected %d", after.nnp, before.nnp);
	if (after.dumpable != before.dumpable)
		zdtm_fail("dumpable %d, expected %d", after.dumpable, before.dumpable);
	zdtm_pass_or_fail();
}

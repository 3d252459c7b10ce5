/*
 * process_state: cwd, umask, resource limits, session and process group.
 *
 * Before READY the test chdir()s into a directory it created
 * ("subdir/deeper"), sets umask(027), lowers the soft limits of
 * RLIMIT_NOFILE (500), RLIMIT_CORE (0) and RLIMIT_STACK (4 MiB) keeping
 * the hard limits, and saves all RLIM_NLIMITS limits.  It must be session
 * and process-group leader (the harness starts it with setsid).
 * On SIGTERM: getcwd() (and the identity of ".") must be the same, the
 * umask must be 027, every soft/hard limit must equal the saved value,
 * and getsid()/getpgid() must still equal getpid().
 */
#include "zdtm.h"

#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

static const char *rname[RLIM_NLIMITS] = {
	"CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE",
	"MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME",
};

static void set_soft(int res, rlim_t soft)
{
	struct rlimit rl;

	if (getrlimit(res, &rl))
		zdtm_die("getrlimit(%s): %m", rname[res]);
	if (rl.rlim_max != RLIM_INFINITY && soft > rl.rlim_max)
		soft = rl.rlim_max;
	rl.rlim_cur = soft;
	if (setrlimit(res, &rl))
		zdtm_die("setrlimit(%s): %m", rname[res]);
}

int main(int argc, char **argv)
{
	char cwd_before[PATH_MAX], cwd[PATH_MAX];
	struct rlimit before[RLIM_NLIMITS], rl;
	struct stat st_before, st;
	mode_t um;

	zdtm_init(argc, argv);
	if (mkdir("subdir", 0755) || mkdir("subdir/deeper", 0700) || chdir("subdir/deeper"))
		zdtm_die("mkdir/chdir: %m");
	if (!getcwd(cwd_before, sizeof(cwd_before)) || stat(".", &st_before))
		zdtm_die("getcwd: %m");
	umask(027);
	set_soft(RLIMIT_NOFILE, 500);
	set_soft(RLIMIT_CORE, 0);
	set_soft(RLIMIT_STACK, 4 << 20);
	for (int i = 0; i < RLIM_NLIMITS; i++)
		if (getrlimit(i, &before[i]))
			zdtm_die("getrlimit(%d): %m", i);
	if (getsid(0) != getpid() || getpgid(0) != getpid())
		zdtm_die("not a session/process group leader: pid %d sid %d pgid %d", getpid(),
			 getsid(0), getpgid(0));

	zdtm_ready();
	zdtm_wait_check();

	if (!getcwd(cwd, sizeof(cwd)))
		zdtm_fail("getcwd: %m");
	else if (strcmp(cwd, cwd_before))
		zdtm_fail("cwd is \"%s\", expected \"%s\"", cwd, cwd_before);
	if (stat(".", &st) || st.st_dev != st_before.st_dev || st.st_ino != st_before.st_ino)
		zdtm_fail("\".\" is not the same directory as before");
	um = umask(0);
	umask(um);
	if (um != 027)
		zdtm_fail("umask %03o, expected 027", um);
	for (int i = 0; i < RLIM_NLIMITS; i++) {
		if (getrlimit(i, &rl))
			zdtm_fail("getrlimit(%s): %m", rname[i]);
		else if (rl.rlim_cur != before[i].rlim_cur || rl.rlim_max != before[i].rlim_max)
			zdtm_fail("RLIMIT_%s = %llu/%llu, expected %llu/%llu", rname[i],
				  (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
				  (unsigned long long)before[i].rlim_cur,
				  (unsigned long long)before[i].rlim_max);
	}
	if (getsid(0) != getpid())
		zdtm_fail("sid %d, expected %d", getsid(0), getpid());
	if (getpgid(0) != getpid())
		zdtm_fail("pgid %d, expected %d", getpgid(0), getpid());
	zdtm_pass_or_fail();
}

/* process_chroot: a process in a chroot (a directory of its work dir), with its cwd below
 * the new root. On SIGTERM "/" is that directory and the cwd is still /sub. */
#include "zdtm.h"
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	struct stat want, got;
	zdtm_init(argc, argv);
	mkdir("root", 0755);
	mkdir("root/sub", 0755);
	if (stat("root", &want)) zdtm_die("stat");
	if (chroot("root") || chdir("/sub")) zdtm_die("chroot");
	zdtm_ready();
	zdtm_wait_check();
	if (stat("/", &got) || got.st_ino != want.st_ino || got.st_dev != want.st_dev)
		zdtm_fail("root is not the chroot");
	if (stat("/sub", &got)) zdtm_fail("no /sub");
	if (access("../sub", F_OK)) zdtm_fail("cwd");
	zdtm_pass_or_fail();
}

#!/bin/bash
# shell_spawn: bash loops that start short-lived children as fast as they
# can, so that at any moment some child is exiting: a dump freezes the tree
# while children die, and must take them as zombies (or skip them once
# reaped), never fail.
#
# The harness runs this file with /bin/bash; bash is the root of the tree:
#   bash (root) ─┬─ spawner 1 ── /bin/true or /bin/false, one after another
#                └─ spawner 2 ── the same
# Each spawner alternates /bin/true and /bin/false and checks every exit
# status (0, then 1): a child that comes back from a dump as a zombie must
# still carry its status.
#
# SIGTERM goes to the root only: its trap sets a flag, the root sits in the
# `wait` builtin, which returns at once for a trapped signal.  The root
# then sends SIGTERM to the spawners, whose traps end their loops after 20
# more children (so spawning still works after a restore).  Each spawner
# writes "count bad first-bad" to a file; the root checks that nothing
# went wrong, that each one ran children after READY, and its own pid.
set -u

failed=0
fail() {
	echo "FAIL: $*"
	failed=1
}

spawner() {
	local n=0 bad=0 first= quit= more=20 rc
	trap 'quit=1' TERM
	while [ -z "$quit" ] || [ "$more" -gt 0 ]; do
		if [ $((n % 2)) = 0 ]; then
			/bin/true
			rc=$?
			[ "$rc" = 0 ] || { bad=$((bad + 1)); [ -n "$first" ] || first="true #$n: $rc"; }
		else
			/bin/false
			rc=$?
			[ "$rc" = 1 ] || { bad=$((bad + 1)); [ -n "$first" ] || first="false #$n: $rc"; }
		fi
		n=$((n + 1))
		[ "$n" != 50 ] || echo "$n" >"started.$1"
		[ -z "$quit" ] || more=$((more - 1))
	done
	echo "$n $bad $first" >"spawner.$1"
}

mypid=$BASHPID
stop=
trap 'stop=1' TERM
rm -f started.* spawner.*

spawner 1 &
s1=$!
spawner 2 &
s2=$!

for ((i = 0; i < 500; i++)); do
	[ -s started.1 ] && [ -s started.2 ] && break
	sleep 0.01
done
if ! [ -s started.1 ] || ! [ -s started.2 ]; then
	echo "FAIL: the spawners did not start"
	exit 1
fi
echo READY

early=
while [ -z "$stop" ]; do
	wait "$s1"
	rc=$?
	if [ -z "$stop" ] && [ -z "$early" ]; then
		early="spawner 1 ended before SIGTERM (status $rc)"
		while [ -z "$stop" ]; do sleep 0.05; done
	fi
done
[ -z "$early" ] || fail "$early"

[ "$BASHPID" = "$mypid" ] || fail "root pid $BASHPID, was $mypid"
for s in "$s1" "$s2"; do
	kill -0 "$s" 2>/dev/null || fail "spawner pid $s is gone"
	kill -TERM "$s" 2>/dev/null
done
wait "$s1"
rc1=$?
wait "$s2"
rc2=$?
[ "$rc1" = 0 ] || fail "spawner 1 exited with $rc1"
[ "$rc2" = 0 ] || fail "spawner 2 exited with $rc2"

for k in 1 2; do
	if ! read -r count bad first 2>/dev/null <"spawner.$k"; then
		fail "spawner $k did not finish"
		continue
	fi
	[ "$bad" = 0 ] || fail "spawner $k: $bad children with a wrong exit status, first: $first"
	[ "$count" -gt 70 ] || fail "spawner $k ran only $count children"
done

if [ $failed = 0 ]; then
	echo PASS
fi
exit $failed

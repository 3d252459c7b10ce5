#!/bin/bash
# make_jobs: GNU make running two jobs in parallel (make -j2), dumped while
# the jobs run.
#
# The harness runs this file with /bin/bash; bash is the root of the tree:
#   bash (root) ── make -j2 ─┬─ bash job.sh a ── sleep 0.01, one after another
#                            └─ bash job.sh b ── the same
# (make may run each job through `sh -c`.)  make holds both ends of its
# jobserver pipe, and gives all its jobs but one the read end of a pipe
# whose write end it closed ("bad stdin"): a pipe with one end only, the
# other closed everywhere.
#
# Each job writes its pid to started.NAME and counts, one external
# `sleep 0.01` per step, until it gets SIGTERM; then it does 10 more steps
# and reads its stdin, which must give EOF at once (/dev/null or make's
# pipe without writers; a writer left open by the restore would make it
# wait).  It writes "count status" to result.NAME.  On SIGTERM (a trap
# while in `wait`) the root sends SIGTERM to both jobs, waits for make
# (exit 0), and checks both results and its own pid.  Signals, not files,
# stop the jobs: a second copy restored from the same images runs in the
# same directory.
#
# Without make installed (.ci/run installs it) this prints SKIP and passes.
set -u

failed=0
fail() {
	echo "FAIL: $*"
	failed=1
}

mypid=$BASHPID
stop=
trap 'stop=1' TERM

if ! command -v make >/dev/null 2>&1; then
	echo "SKIP: make is not installed"
	echo READY
	while [ -z "$stop" ]; do sleep 0.05; done
	echo PASS
	exit 0
fi

rm -f started.* result.*
cat >job.sh <<'EOF'
n=0 quit=
trap 'quit=1' TERM
while [ -z "$quit" ]; do
	n=$((n + 1))
	[ "$n" != 5 ] || echo "$$" >"started.$1"
	sleep 0.01
done
for i in 1 2 3 4 5 6 7 8 9 10; do
	n=$((n + 1))
	sleep 0.01
done
read -r -t 5 line
echo "$n $?" >"result.$1"
EOF
printf 'all: a b\na:\n\tbash job.sh a\nb:\n\tbash job.sh b\n' >Makefile

make -j2 >make.log 2>&1 &
mk=$!

for ((i = 0; i < 500; i++)); do
	[ -s started.a ] && [ -s started.b ] && break
	sleep 0.01
done
if ! [ -s started.a ] || ! [ -s started.b ]; then
	echo "FAIL: the make jobs did not start"
	kill -TERM "$mk"
	wait
	exit 1
fi
job_a=$(<started.a)
job_b=$(<started.b)
echo READY

early=
while [ -z "$stop" ]; do
	wait "$mk"
	rc=$?
	if [ -z "$stop" ] && [ -z "$early" ]; then
		early="make ended before SIGTERM (status $rc)"
		while [ -z "$stop" ]; do sleep 0.05; done
	fi
done
[ -z "$early" ] || fail "$early"

[ "$BASHPID" = "$mypid" ] || fail "root pid $BASHPID, was $mypid"
kill -0 "$mk" 2>/dev/null || fail "make (pid $mk) is gone"
rm -f result.*
kill -TERM "$job_a" "$job_b" || fail "cannot signal the jobs $job_a and $job_b"
wait "$mk"
rc=$?
[ "$rc" = 0 ] || fail "make exited with $rc: $(tr '\n' ' ' <make.log)"
for j in a b; do
	if ! read -r count status 2>/dev/null <"result.$j"; then
		fail "job $j did not finish"
		continue
	fi
	[ "$count" -ge 15 ] || fail "job $j counted to $count only"
	# read at EOF fails with 1; a timeout (a writer still open) gives > 128
	[ "$status" = 1 ] || fail "job $j: reading its stdin gave status $status, not EOF"
done

if [ $failed = 0 ]; then
	echo PASS
fi
exit $failed

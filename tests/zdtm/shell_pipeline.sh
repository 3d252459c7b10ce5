#!/bin/bash
# shell_pipeline: bash running `producer | filter | consumer > consumed.txt`
# in the background, made of small bash loops.
#
# The harness runs this file with /bin/bash; bash is the root of the tree:
#   bash (root) ─┬─ producer subshell ── sleep 0.01 (one after another)
#                ├─ filter subshell
#                └─ consumer subshell
# The producer writes the numbers 0, 1, 2, ... (about 80 a second: each
# one is followed by an external `sleep 0.01`), the filter turns n into
# "n n*7%1000", the consumer checks every line in order (no gap, no
# duplicate, no reordering, right checksum) and writes n to consumed.txt.
# Pipes between three processes, data in flight and a short-lived child
# process are all there at any moment.
#
# SIGTERM goes to the root bash only.  Its trap just sets a flag: the
# root sits in the `wait` builtin, which returns at once when a trapped
# signal arrives (a foreground command would delay the trap).  The root
# then sends SIGTERM to the producer, whose own trap ends its loop after
# the current number; EOF then travels down the pipeline.  Every stage
# writes its count (and the producer its pid) to a file at the end.  The
# root checks the stages' results, that consumed.txt is exactly 0..N-1,
# that N grew after READY, that the producer's and its own pid did not
# change, and prints PASS or FAIL lines.
set -u

failed=0
fail() {
	echo "FAIL: $*"
	failed=1
}

producer() {
	local i=0 quit=
	trap 'quit=1' TERM
	echo "$BASHPID" >producer.pid
	while [ -z "$quit" ]; do
		echo "$i" || { echo "FAIL: producer: write error at $i" >&2; exit 1; }
		i=$((i + 1))
		sleep 0.01
	done
	echo "$i $BASHPID" >produced
}

filter() {
	local n count=0
	while read -r n; do
		echo "$n $((n * 7 % 1000))"
		count=$((count + 1))
	done
	echo "$count" >filtered
}

consumer() {
	local n x expect=0 bad=0 first=
	while read -r n x; do
		if [ "$n" != "$expect" ] || [ "$x" != "$((expect * 7 % 1000))" ]; then
			bad=$((bad + 1))
			[ -n "$first" ] || first="line $expect is '$n $x'"
		fi
		echo "$n"
		expect=$((expect + 1))
	done
	if [ -n "${n:-}" ]; then	# a last line without newline
		bad=$((bad + 1))
		[ -n "$first" ] || first="partial last line '$n'"
	fi
	echo "$expect $bad $first" >consumer.result
}

mypid=$BASHPID
stop=
trap 'stop=1' TERM
rm -f producer.pid produced filtered consumer.result consumed.txt

producer | filter | consumer >consumed.txt &
last=$!

# set-up: every stage runs and a few numbers went through
for ((i = 0; i < 500; i++)); do
	if [ -s producer.pid ] && [ -s consumed.txt ]; then
		lines=$(wc -l <consumed.txt)
		[ "$lines" -ge 3 ] && break
	fi
	sleep 0.01
done
if ! [ -s producer.pid ] || [ "$(wc -l <consumed.txt)" -lt 3 ]; then
	echo "FAIL: the pipeline did not start"
	exit 1
fi
prod_pid=$(<producer.pid)
ready_lines=$(wc -l <consumed.txt)
echo READY

# wait for SIGTERM (the trap makes `wait` return); the pipeline must not end
# on its own
early=
while [ -z "$stop" ]; do
	wait "$last"
	rc=$?
	if [ -z "$stop" ] && [ -z "$early" ]; then
		early="the pipeline ended before SIGTERM (consumer status $rc)"
		while [ -z "$stop" ]; do sleep 0.05; done
	fi
done
[ -z "$early" ] || fail "$early"

if [ "$BASHPID" != "$mypid" ]; then
	fail "root pid $BASHPID, was $mypid"
fi
if ! kill -0 "$prod_pid" 2>/dev/null; then
	fail "producer (pid $prod_pid) is gone"
fi
kill -TERM "$prod_pid" 2>/dev/null
wait "$last"
rc=$?
wait    # the other stages
[ "$rc" = 0 ] || fail "consumer exited with $rc"

read -r produced ppid 2>/dev/null <produced || fail "the producer did not finish"
read -r filtered 2>/dev/null <filtered || fail "the filter did not finish"
read -r consumed bad first 2>/dev/null <consumer.result || fail "the consumer did not finish"
produced=${produced:--1} filtered=${filtered:--1} consumed=${consumed:--1}
[ "${ppid:-}" = "$prod_pid" ] || fail "producer pid ${ppid:-?} at the end, $prod_pid at the start"
[ "$produced" = "$filtered" ] || fail "produced $produced numbers, the filter saw $filtered"
[ "$produced" = "$consumed" ] || fail "produced $produced numbers, the consumer saw $consumed"
[ "${bad:-0}" = 0 ] || fail "consumer: $bad bad lines, first: ${first:-}"
if ! awk -v n="$produced" 'NR - 1 != $1 { if (!bad++) printf "line %d is %s\n", NR, $0 }
	END { if (NR != n) printf "%d lines, expected %d\n", NR, n; exit (bad || NR != n) }' \
	consumed.txt >awk.out; then
	fail "consumed.txt: $(head -2 awk.out | tr '\n' ' ')"
fi
[ "$produced" -gt "$ready_lines" ] || fail "no progress after READY ($produced, $ready_lines at READY)"

if [ $failed = 0 ]; then
	echo PASS
fi
exit $failed

#!/bin/bash
# Run the ZDTM tests in "sanity" mode (no dump/restore), exactly as the
# stasis harness runs them: compiled with the harness' gcc command line,
# started with setsid in a fresh temp dir, stdin=/dev/null, stdout+stderr
# appended to test.log; after READY we wait 0.3 s, send SIGTERM and expect
# exit status 0 and a PASS line.
#
# usage: tests/zdtm/run-standalone.sh [test-name ...]    (default: all)
# env:   ZDTM_HOOK="cmd"  run as `cmd <pid> <test> <dir>` between READY and
#                         SIGTERM (e.g. to corrupt the process on purpose)
#        ZDTM_KEEP=1      keep the temp directory
#        ZDTM_WAIT=secs   time between READY and SIGTERM (default 0.3)
set -u

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/zdtm-standalone.XXXXXX)
declare -A ARGS=([mem_anon]="64")

if [ $# -gt 0 ]; then
	tests=("$@")
else
	tests=()
	for f in "$here"/*.c; do
		tests+=("$(basename "$f" .c)")
	done
fi

passed=0
failed=0
failed_names=()

# state letter of a process, empty if it is gone
pstate() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	s=${s##*) }
	echo "${s%% *}"
}

run_one() {
	local t=$1 bin="$work/bin/$1" dir="$work/$1" pid i st rc sid

	mkdir -p "$dir"
	if ! gcc -O1 -g -Wall -Werror -D_GNU_SOURCE -I "$here/lib" -o "$bin" \
		"$here/$t.c" "$here/lib/zdtm.c" >"$dir/build.log" 2>&1; then
		echo "  build failed:"; sed 's/^/    /' "$dir/build.log"
		return 1
	fi

	# In a non-interactive shell the background subshell is not a process
	# group leader, so setsid(1) calls setsid() and execs without forking:
	# $! is the test's pid.
	( cd "$dir" && exec setsid "$bin" ${ARGS[$t]:-} </dev/null >>test.log 2>&1 ) &
	pid=$!

	for ((i = 0; i < 200; i++)); do
		grep -qx READY "$dir/test.log" 2>/dev/null && break
		st=$(pstate $pid)
		if [ -z "$st" ] || [ "$st" = Z ]; then break; fi
		sleep 0.05
	done
	if ! grep -qx READY "$dir/test.log" 2>/dev/null; then
		echo "  no READY"; kill -KILL $pid 2>/dev/null; { wait $pid; } 2>/dev/null
		sed 's/^/    /' "$dir/test.log"
		return 1
	fi
	sid=$(cut -d' ' -f6 "/proc/$pid/stat" 2>/dev/null)
	if [ "$sid" != "$pid" ]; then
		echo "  test is not a session leader (sid=$sid pid=$pid)"
		kill -KILL $pid 2>/dev/null; { wait $pid; } 2>/dev/null
		return 1
	fi

	sleep "${ZDTM_WAIT:-0.3}"
	if [ -n "${ZDTM_HOOK:-}" ]; then
		$ZDTM_HOOK $pid "$t" "$dir"
	fi
	kill -TERM $pid

	for ((i = 0; i < 100; i++)); do
		st=$(pstate $pid)
		if [ -z "$st" ] || [ "$st" = Z ]; then break; fi
		sleep 0.05
	done
	st=$(pstate $pid)
	if [ -n "$st" ] && [ "$st" != Z ]; then
		echo "  did not exit within 5 s after SIGTERM"
		kill -KILL $pid 2>/dev/null
	fi
	{ wait $pid; } 2>/dev/null
	rc=$?
	if [ $rc -ne 0 ] || ! grep -qx PASS "$dir/test.log" ||
	   grep -q '^FAIL' "$dir/test.log"; then
		echo "  exit status $rc, log:"
		sed 's/^/    /' "$dir/test.log"
		return 1
	fi
	return 0
}

mkdir -p "$work/bin"
for t in "${tests[@]}"; do
	if [ ! -f "$here/$t.c" ]; then
		echo "$t: no such test"
		failed=$((failed + 1)); failed_names+=("$t")
		continue
	fi
	start=$(date +%s%N)
	if run_one "$t"; then
		printf '%-22s PASS (%d ms)\n' "$t" $((($(date +%s%N) - start) / 1000000))
		passed=$((passed + 1))
	else
		printf '%-22s FAIL\n' "$t"
		failed=$((failed + 1)); failed_names+=("$t")
	fi
done

echo "$passed passed, $failed failed${failed_names:+ (${failed_names[*]})}"
if [ $failed -eq 0 ] && [ -z "${ZDTM_KEEP:-}" ]; then
	rm -rf "$work"
else
	echo "logs in $work"
fi
[ $failed -eq 0 ]

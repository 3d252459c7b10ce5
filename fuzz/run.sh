#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a while, one after the other, and prints how
# many inputs each ran. Used by CI (.ci/run: a short run of each) and for long runs:
#
#     fuzz/run.sh [-t SECONDS_PER_TARGET] [-n RUNS_PER_TARGET] [TARGET...]
#
# (each target stops at whichever comes first: -t seconds, default 20, or -n executions,
# default unlimited). Every run appends a line to artifacts/runs.tsv (date, target, executions,
# seconds, executions per second, result), the tally of what ran on this machine.
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read only) and from what
# earlier runs on this machine found (fuzz/grown/<target>/, not committed). A crash, a hang
# (-timeout), an allocation over -malloc_limit_mb or a memory use over -rss_limit_mb fails the
# run, leaves the input in fuzz/artifacts/<target>/, and is a bug to fix (then copy the input
# into fuzz/regressions/<target>/, which `cargo test` replays on stable).
#
# Needs the nightly toolchain (rustup) and cargo-fuzz (installed here when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

seconds=20
runs_limit=-1
while getopts "t:n:" opt; do
    case "$opt" in
        t) seconds="$OPTARG" ;;
        n) runs_limit="$OPTARG" ;;
        *) echo "usage: $0 [-t SECONDS] [-n RUNS] [TARGET...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly); the fuzz" \
        "targets need it (-Zsanitizer). Not skipping: failing." >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

mapfile -t all < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^stasis-fuzz$')
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all[@]}")

echo "==== building the fuzz targets (nightly, address sanitizer, debug assertions) ===="
if [ "${#targets[@]}" -eq 1 ]; then
    nice -n 19 cargo +nightly fuzz build "${targets[0]}"
else
    nice -n 19 cargo +nightly fuzz build
fi

# Bounds: no single allocation over 256 MiB (the largest buffer an image may make the readers
# allocate is a 64 MiB record; fuzz inputs are far smaller), no more than 2 GiB in all, no input
# slower than 10 s.
limits=(-rss_limit_mb=2048 -malloc_limit_mb=256 -timeout=10)

summary=()
status=0
for t in "${targets[@]}"; do
    mkdir -p "grown/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "==== fuzz $t: ${seconds}s ===="
    set +e
    nice -n 19 cargo +nightly fuzz run "$t" "grown/$t" "corpus/$t" -- \
        "${limits[@]}" -max_total_time="$seconds" -runs="$runs_limit" \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s+=$1} END {print s+0}')
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | awk '{s+=$1} END {print s+0}')
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$runs" "${took:-?}" "$rate" \
        "$([ "$rc" -eq 0 ] && echo ok || echo "FAILED($rc)")" >>artifacts/runs.tsv
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "fuzz $t FAILED (exit $rc); the end of its log ($log):" >&2
        tail -n 40 "$log" >&2
        summary+=("$t: FAILED after $runs runs")
    else
        summary+=("$t: $runs runs, $rate execs/s")
    fi
done
echo "==== fuzz summary (${seconds}s per target) ===="
printf '%s\n' "${summary[@]}"
exit "$status"

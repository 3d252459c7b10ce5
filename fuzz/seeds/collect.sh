#!/usr/bin/env bash
# Collects real inputs for the fuzz corpora: runs a few ZDTM programs, copies their /proc files
# (status, stat, smaps, fdinfo of every fd, mountinfo, timers; /proc/locks) and dumps them
# with the stasis CLI (images authenticated with a throwaway key). Run as root from anywhere:
#
#     fuzz/seeds/collect.sh [STASIS_BINARY] [OUT_DIR]
#
# then `fuzz/seeds/make_corpus.py OUT_DIR fuzz/corpus` turns what it collected into the seed
# corpora (small files, one per input, in each target's own input format).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
stasis="${1:-$repo/target/debug/stasis}"
out="${2:-/tmp/stasis-fuzz-seeds}"
tests=(file_epoll file_inotify file_fanotify file_eventfd file_signalfd file_timerfd file_locks
    pidfd pipe_inflight files_deleted file_memfd mem_anon posix_timers tree_threads signals
    seccomp_filter fifo file_opath files_devnull_dir files_proc_self mem_aio_ring
    mem_file_shared pipe_lone_end process_chroot process_stopped sock_netlink sock_packet
    syscall_read_pipe exe_memfd mm_fields rseq mem_cow_tree tree_mem_mixed
    files_deleted_linked)
# Dump options per program: page runs of every codec (raw, zstd, inherited from a parent).
declare -A dump_args=([tree_mem_mixed]="--compress")
# The tool harness may leak descriptors into what we start: the dump refuses unknown ones.
exec 250>&- 251>&- 2>/dev/null || true
rm -rf "$out"
mkdir -p "$out/bin" "$out/proc" "$out/images"
for t in "${tests[@]}"; do
    gcc -O1 -g -Wall -Werror -D_GNU_SOURCE -I "$repo/tests/zdtm/lib" -o "$out/bin/$t" \
        "$repo/tests/zdtm/$t.c" "$repo/tests/zdtm/lib/zdtm.c"
    work="$out/run/$t"
    mkdir -p "$work"
    (cd "$work" && exec setsid "$out/bin/$t" </dev/null >test.log 2>&1) &
    pid=$!
    for _ in $(seq 100); do
        grep -q READY "$work/test.log" 2>/dev/null && break
        sleep 0.1
    done
    if ! grep -q READY "$work/test.log"; then
        echo "$t: not ready" >&2
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" || true
        continue
    fi
    p="$out/proc/$t"
    mkdir -p "$p/fdinfo"
    for f in status stat smaps maps mountinfo timers; do
        cat "/proc/$pid/$f" >"$p/$f" 2>/dev/null || true
    done
    for fd in /proc/"$pid"/fdinfo/*; do
        n="${fd##*/}"
        cat "$fd" >"$p/fdinfo/$n" 2>/dev/null || true
        readlink "/proc/$pid/fd/$n" >"$p/fdinfo/$n.link" 2>/dev/null || true
    done
    cat /proc/locks >"$p/locks"
    # shellcheck disable=SC2086 # the options are words
    if "$stasis" dump -t "$pid" -D "$out/images/$t" --key-file "$out/key" ${dump_args[$t]:-} \
        --log-file "$out/run/$t.dump.log" >/dev/null 2>&1; then
        echo "$t: dumped"
    else
        echo "$t: dump failed (see $out/run/$t.dump.log)" >&2
        rm -rf "${out:?}/images/$t"
    fi
    kill -9 "$pid" 2>/dev/null || true
    # Children of tree tests are gone with their session's leader killed by the dump.
    pkill -9 -s "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done

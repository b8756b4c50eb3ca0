#!/usr/bin/env bash
# Runs lab test jobs from a queue directory that several lab VMs share, until
# the queue is empty: each worker claims the next job by renaming its file
# (atomic on the host, so no job runs twice), runs it, and prints its time.
# A job is one file in QUEUE/todo holding "TEST-BINARY ARGS..."; jobs run in
# the order of their names (scripts/test.sh puts the longest first). A job
# done moves to QUEUE/done; one still named WORKER-NAME-JOB was cut short
# (its lab VM stalled: scripts/test.sh puts it back in QUEUE/todo).
#
# usage: tests/lab/queue.sh QUEUE WORKER-NAME
# HULL_LAB_JOB_TIMEOUT (default 1800 s) bounds one job: past it, what runs is
# printed and the job is killed, so one hung test costs one job, not the lab.
set -uo pipefail

q="${1:?usage: queue.sh QUEUE WORKER-NAME}"
me="${2:?usage: queue.sh QUEUE WORKER-NAME}"
limit="${HULL_LAB_JOB_TIMEOUT:-1800}"
rc=0

show_ps() {
    ps -eo pid,stat,etime,time,wchan:20,args --sort=start_time \
        | grep -v -E '\[|ps -eo' | cut -c1-160 | tail -15
}

while :; do
    job="$(ls "$q/todo" 2>/dev/null | head -1)"
    [[ -n "$job" ]] || break
    # Lost the race for it to another worker: take the next one.
    mv "$q/todo/$job" "$q/$me-$job" 2>/dev/null || continue
    # A job is `[NAME=value ...] BINARY ARGS...`: the assignments go to its environment.
    read -r -a words < "$q/$me-$job"
    envs=()
    while [[ ${words[0]} == [A-Z]*=* ]]; do envs+=("${words[0]}"); words=("${words[@]:1}"); done
    bin="${words[0]}" args="${words[*]:1}"
    echo
    echo "--- $job on $me: ${envs[*]}${envs[*]:+ }$(basename "$bin") $args"
    started=$(date +%s)
    # Its own session, so a timed-out job's children (containerd, shims) go with it.
    # RUSTC_BOOTSTRAP lets the stable test harness print each test's time;
    # --nocapture prints a test's lines as they come (a hang shows where it is).
    # shellcheck disable=SC2086
    env "${envs[@]}" RUSTC_BOOTSTRAP=1 setsid "$bin" --ignored --test-threads=1 --color never --nocapture \
        -Z unstable-options --report-time $args &
    pid=$!
    n=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        n=$((n + 1))
        if ((n % 600 == 0)); then
            echo "--- $job still running after $n s:"
            show_ps
        fi
        if ((n >= limit)); then
            echo "--- $job: timed out after $n s (HULL_LAB_JOB_TIMEOUT=$limit); what runs:"
            show_ps
            kill -TERM -- "-$pid" 2>/dev/null
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -KILL -- "-$pid" 2>/dev/null
            break
        fi
    done
    wait "$pid"
    status=$?
    [[ $status == 0 ]] || rc=1
    echo "--- $job took $(($(date +%s) - started)) s (status $status)"
    mkdir -p "$q/done" && mv "$q/$me-$job" "$q/done/$me-$job"
done
exit $rc

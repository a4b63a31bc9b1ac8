#!/usr/bin/env bash
# Fault-recovery tests under CPU load: run them N times in a row while other processes
# keep every CPU busy (what a loaded machine or a shared CI runner does to the timing of
# Ray workers restarting after a failure). Run by hand from the repository root:
#
#   scripts/stress_fault_recovery.sh            # 10 rounds
#   N=2 scripts/stress_fault_recovery.sh        # 2 rounds
#   BURNERS=4 K="failure" scripts/stress_fault_recovery.sh
#
# Environment:
#   N        rounds (default 10)
#   BURNERS  busy-loop processes (default: one per CPU)
#   BURN_NICE  their niceness (default: Ray's worker niceness, $RAY_worker_niceness or 15).
#            Ray starts its worker processes at nice 15, so burners at nice 0 would take
#            ~96% of the CPUs from the Ray Train workers (CFS weights 1024 vs 36): the first
#            test had not finished after 20 minutes here. At the workers' niceness each burner competes
#            with each worker as an equal. BURN_NICE=0 for the harshest (slowest) load.
#   K        pytest -k expression (default "failure or fault or resume")
#   TESTS    test files to select from (default below). Whole files, not the tests/ folder,
#            so that an unrelated module that fails to import does not stop the run.
#   PYTHON   interpreter (default .venv/bin/python)
#
# Prints "k/N passed" and exits non-zero at the first failing round. Each round's pytest
# output is kept in $LOGS/round-<k>.log (a fresh temporary folder unless LOGS is set).
set -uo pipefail

N=${N:-10}
BURNERS=${BURNERS:-$(nproc)}
BURN_NICE=${BURN_NICE:-${RAY_worker_niceness:-15}}
K=${K:-"failure or fault or resume"}
TESTS=${TESTS:-"tests/test_continual_job.py tests/test_train_job.py tests/test_session.py"}
PYTHON=${PYTHON:-.venv/bin/python}
LOGS=${LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/stress-fault-recovery.XXXXXX")}

if [[ ! -x $PYTHON ]]; then
    echo "no $PYTHON: run from the repository root after 'make install'" >&2
    exit 2
fi
mkdir -p "$LOGS"

# shellcheck disable=SC2086
selected=$("$PYTHON" -m pytest --collect-only -q -k "$K" $TESTS 2>&1 | grep '::')
if [[ -z $selected ]]; then
    echo "no test selected by -k \"$K\" in $TESTS" >&2
    exit 2
fi
echo "selected (-k \"$K\"):"
sed 's/^/  /' <<<"$selected"

burner_pids=()
stop_burners() {
    for pid in "${burner_pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${burner_pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    burner_pids=()
}
trap stop_burners EXIT
passed=0
round=0
# bash runs this once the foreground pytest has returned (it got the signal too)
trap 'echo "interrupted by a signal in round $round/$N: $passed/$N passed" >&2; exit 130' INT TERM

for _ in $(seq "$BURNERS"); do
    nice -n "$BURN_NICE" "$PYTHON" -c 'while True: pass' &
    burner_pids+=($!)
done
echo "logs: $LOGS"
echo "$BURNERS CPU burners at nice $BURN_NICE running (pids ${burner_pids[*]}) on $(nproc) CPUs"

for round in $(seq "$N"); do
    start=$SECONDS
    log="$LOGS/round-$round.log"
    # shellcheck disable=SC2086
    "$PYTHON" -m pytest -x -q -p no:cacheprovider -k "$K" $TESTS >"$log" 2>&1
    rc=$?
    summary=$(tail -1 "$log")
    if [[ $rc -ne 0 ]]; then
        echo "round $round/$N FAILED after $((SECONDS - start)) s (pytest rc $rc): $summary"
        tail -40 "$log"
        echo "$passed/$N passed"
        exit 1
    fi
    passed=$((passed + 1))
    echo "round $round/$N ok in $((SECONDS - start)) s: $summary"
done
echo "$passed/$N passed"

#!/usr/bin/env bash
# Repeats the kill -9 recovery test many times (default 1,000 rounds; the test suite runs 20):
# each round starts `nestr run` on a chatty step, kills it with SIGKILL mid-output, and checks
# that the next command reports the run `interrupted`, that every committed line is there with
# no gap or duplicate, that `PRAGMA integrity_check` is ok, and that no program survives.
#   tests/kill-loop.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
NESTR_KILL_ROUNDS="${1:-1000}" cargo test --test all -- --exact scheduler::kill_nine_twenty_times_loses_nothing_committed --nocapture

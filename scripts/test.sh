#!/usr/bin/env bash
# Runs the whole test suite. Installs what is missing first: the pinned
# emulators (npm, emulators/package-lock.json), the independent KPL
# implementation used as a cross-check (PyPI, tests/kpl/requirements.txt)
# and moto, the CloudWatch emulator (PyPI, tests/metrics/requirements.txt);
# and Debian's prometheus and chromium (apt-get) for tests/observe.rs.
# The tests start the emulators themselves on free 127.0.0.1 ports.
set -euo pipefail

usage="usage: scripts/test.sh [CARGO TEST OPTIONS] [-- TEST BINARY OPTIONS]

Installs what is missing (npm emulators, aws-kinesis-agg and moto from PyPI,
prometheus and chromium with apt-get), then runs cargo test --all-targets
and the consumer, processing, scale-out, dead-letter, replay,
multi-stream, lease-load and balance-load tests again reading through
enhanced fan-out and the scale-out tests again with the workers row
instead of a leader (without arguments,
three test binaries at a time; with arguments, for example a test name
filter, one after another through cargo test), the doc tests, and the
lease simulation over SIM_SEEDS seeds (default 3000) in an optimized
build, with the workers row and with a leader."
for arg in "$@"; do
  case "$arg" in
    -h | --help) echo "$usage"; exit 0 ;;
    --) break ;; # what follows is for the test binaries (cargo test -- --help)
  esac
done

# Runs every test binary of `cargo test --all-targets`, and the named ones
# again with KINESIS_TEST_RETRIEVAL=fan-out, LANES at a time, the slowest
# first; prints each one's output when it ends (whole, when it failed) and
# fails if any failed.
run_tests_side_by_side() {
  local lanes=$1 fan_out=" ${*:2} " jobs status=0
  jobs=$(mktemp)
  cargo test --all-targets --no-run --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = "example/" if m["target"]["kind"] == ["example"] else ""
        print(kind + m["target"]["name"], m["executable"])
' | while read -r name exe; do
    echo "$name $exe"
    if [[ $fan_out == *" $name "* ]]; then echo "$name/fan-out $exe KINESIS_TEST_RETRIEVAL=fan-out"; fi
    if [[ $name == scale_out ]]; then echo "$name/workers-row $exe KINESIS_TEST_COORDINATION=workers-row"; fi
  done >"$jobs"
  # Longest first (measured), so that no lane is left with a long one at the end.
  local slow="fan_out lease_lifecycle scale_out scale_out/fan-out scale_out/workers-row faults processing/fan-out multi_stream/fan-out processing file_sink multi_stream"
  { for name in $slow; do grep "^$name " "$jobs" || true; done
    grep -v -E "^($(echo "$slow" | tr ' ' '|')) " "$jobs"; } \
    | xargs -P "$lanes" -L 1 bash -c '
name=$1 exe=$2; shift 2
log=$(mktemp); started=$SECONDS
if env "$@" "$exe" >"$log" 2>&1; then
  echo "test.sh: $name passed in $((SECONDS - started)) s: $(grep "^test result" "$log" | tail -1)"
else
  cat "$log"; echo "test.sh: $name FAILED after $((SECONDS - started)) s"; rm -f "$log"; exit 1
fi
rm -f "$log"' _ || status=$?
  rm -f "$jobs"
  return $status
}

cd "$(dirname "$0")/.."
source scripts/emulators.sh
install_emulators
install_observe_tools
for requirements in tests/kpl/requirements.txt tests/metrics/requirements.txt; do
  if [ -f "$requirements" ]; then
    python3 -m pip install --quiet --disable-pip-version-check -r "$requirements"
  fi
done
# The tests that run again reading through enhanced fan-out (HTTP/2
# SubscribeToShard on kinesis-local's plain port) instead of polling.
fan_out_tests=(consumer processing scale_out dead_letter replay multi_stream lease_load balance_load)
if [ $# -gt 0 ]; then
  # A filter or cargo options: one test binary after another, as cargo runs them.
  cargo test --all-targets "$@"
  KINESIS_TEST_RETRIEVAL=fan-out cargo test "${fan_out_tests[@]/#/--test=}" "$@"
  KINESIS_TEST_COORDINATION=workers-row cargo test --test=scale_out "$@"
else
  # The whole suite: built once, then its binaries run three at a time. They
  # spend most of their time waiting on emulators and failover clocks (one
  # after another they took 11m20s for 1m37s of CPU), and cargo
  # holds its lock while tests run, so they are started here directly.
  run_tests_side_by_side 3 "${fan_out_tests[@]}"
fi
cargo test --doc
# The lease simulation (src/lease/sim.rs) over many more seeds than the
# debug run above: optimized, 3,000 seeds take about half a minute.
SIM_SEEDS="${SIM_SEEDS:-3000}" cargo test --release --lib lease::sim
# Its seeded sweep again with leader-run coordination.
SIM_COORDINATION=leader SIM_SEEDS="${SIM_SEEDS:-3000}" \
  cargo test --release --lib lease::sim::workers_share_a_stream_through_faults_and_reshards

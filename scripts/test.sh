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
with the given arguments (for example a test name filter), the consumer,
processing, scale-out, dead-letter, replay and multi-stream tests again
reading through enhanced fan-out, the doc tests, and the lease simulation over SIM_SEEDS
seeds (default 3000) in an optimized build."
for arg in "$@"; do
  case "$arg" in
    -h | --help) echo "$usage"; exit 0 ;;
    --) break ;; # what follows is for the test binaries (cargo test -- --help)
  esac
done

cd "$(dirname "$0")/.."
source scripts/emulators.sh
install_emulators
install_observe_tools
for requirements in tests/kpl/requirements.txt tests/metrics/requirements.txt; do
  if [ -f "$requirements" ]; then
    python3 -m pip install --quiet --disable-pip-version-check -r "$requirements"
  fi
done
cargo test --all-targets "$@"
# The consumer tests again, reading through enhanced fan-out (HTTP/2
# SubscribeToShard on kinesis-local's plain port) instead of polling.
KINESIS_TEST_RETRIEVAL=fan-out cargo test --test consumer --test processing --test scale_out \
  --test dead_letter --test replay --test multi_stream "$@"
cargo test --doc
# The lease simulation (src/lease/sim.rs) over many more seeds than the
# debug run above: optimized, 3,000 seeds take about half a minute.
SIM_SEEDS="${SIM_SEEDS:-3000}" cargo test --release --lib lease::sim

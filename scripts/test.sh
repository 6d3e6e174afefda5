#!/usr/bin/env bash
# Runs the whole test suite. Installs what is missing first: the pinned
# emulators (npm, emulators/package-lock.json), the independent KPL
# implementation used as a cross-check (PyPI, tests/kpl/requirements.txt)
# and moto, the CloudWatch emulator (PyPI, tests/metrics/requirements.txt).
# The tests start the emulators themselves on free 127.0.0.1 ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh
install_emulators
for requirements in tests/kpl/requirements.txt tests/metrics/requirements.txt; do
  if [ -f "$requirements" ]; then
    python3 -m pip install --quiet --disable-pip-version-check -r "$requirements"
  fi
done
cargo test --all-targets "$@"
cargo test --doc
# The lease simulation (src/lease/sim.rs) over many more seeds than the
# debug run above: optimized, 3,000 seeds take about half a minute.
SIM_SEEDS="${SIM_SEEDS:-3000}" cargo test --release --lib lease::sim

#!/usr/bin/env bash
# Runs the whole test suite. Installs what is missing first: the pinned
# emulators (npm, emulators/package-lock.json) and the independent KPL
# implementation used as a cross-check (PyPI, tests/kpl/requirements.txt).
# The tests start the emulators themselves on free 127.0.0.1 ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh
install_emulators
if [ -f tests/kpl/requirements.txt ]; then
  python3 -m pip install --quiet --disable-pip-version-check -r tests/kpl/requirements.txt
fi
cargo test --all-targets "$@"
cargo test --doc

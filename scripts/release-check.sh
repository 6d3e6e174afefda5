#!/usr/bin/env bash
# Publish-readiness, run by .ci/run: the package holds only what a user
# needs, it builds on its own (cargo publish --dry-run), and every runtime
# dependency comes from crates.io under a permissive license.
set -euo pipefail
cd "$(dirname "$0")/.."
list=$(cargo package --list --allow-dirty --quiet)
unwanted=$(grep -E '^(tests|bench|fuzz|emulators|scripts|\.ci)/|^examples/soak\.rs$' <<<"$list" || true)
if [ -n "$unwanted" ]; then
  echo "release check: the package holds files users do not need:" >&2
  echo "$unwanted" >&2
  exit 1
fi
for needed in README.md CHANGELOG.md LICENSE-MIT LICENSE-APACHE src/lib.rs; do
  grep -qx "$needed" <<<"$list" || { echo "release check: $needed is missing from the package" >&2; exit 1; }
done
echo "release check: package of $(wc -l <<<"$list") files"
cargo publish --dry-run --allow-dirty --quiet
python3 scripts/check-dependencies.py

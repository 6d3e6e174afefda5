#!/usr/bin/env bash
# Builds, lints and unit-tests the crate against the newest semver-compatible
# versions of its dependencies, run by .ci/run. Our Cargo.lock pins what we
# tested; a new project depending on the crate resolves the newest versions
# instead, so a deprecation or a break there (rustls 0.23.48 deprecated a
# function we called) should show up here first, not in a user's build.
#
# Works on a scratch copy (the repository's Cargo.lock is left alone) and
# keeps its build in target/newest-deps so later runs only rebuild what
# changed. Prints the versions that differ from the lockfile.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The files git knows of (tracked, or new and not ignored): no target/.
git ls-files -z --cached --others --exclude-standard \
  | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
  | tar --null -cf - -T - | tar -xf - -C "$scratch"
export CARGO_TARGET_DIR="$PWD/target/newest-deps"
cd "$scratch"
cargo update --quiet
echo "newest-deps: versions newer than Cargo.lock's:"
diff <(grep -A1 '^name = ' "$OLDPWD/Cargo.lock" | grep -v '^--$' | paste - - | sort) \
     <(grep -A1 '^name = ' Cargo.lock | grep -v '^--$' | paste - - | sort) \
  | sed -n 's/^> name = "\(.*\)"\tversion = "\(.*\)"$/  \1 \2/p' || true
cargo clippy --all-targets -- -D warnings
cargo test --lib --quiet
echo "newest-deps: passed in $((SECONDS - started)) s"

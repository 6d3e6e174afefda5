#!/usr/bin/env bash
# The local demo: Spark's Kinesis word count end to end on local emulators,
# with no AWS account. Installs and starts the emulators on 127.0.0.1,
# creates a stream, runs the producer and the word count for a short while
# (DEMO_SECONDS, default 20), and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh

seconds="${DEMO_SECONDS:-20}"
echo "building the examples (the first build takes a minute or two)..." >&2
cargo build --example producer --example word_count
target_dir="${CARGO_TARGET_DIR:-target}"

trap 'kill ${PRODUCER_PID:-} 2>/dev/null || true; stop_emulators' EXIT
echo "starting the emulators..." >&2
start_emulators
echo "kinesis-local at $KINESIS_URL, dynalite at $DYNAMODB_URL" >&2

eval "$(emulator_exports)"
export RUST_LOG="${RUST_LOG:-warn}"

"$target_dir/debug/examples/producer" --stream words --create-shards 2 --duration-secs 0 >/dev/null
echo "created stream words with 2 shards; producing for $seconds s" >&2
"$target_dir/debug/examples/producer" --stream words --records-per-sec 50 --words-per-record 5 \
  --duration-secs "$seconds" &
PRODUCER_PID=$!
# SIGINT after the producer is done: the word count stops gracefully.
timeout -s INT "$((seconds + 5))" "$target_dir/debug/examples/word_count" --stream words --app word-count-demo \
  --batch-interval-ms 2000 --top 5 || [ $? -eq 124 ]
status=0
wait "$PRODUCER_PID" || status=$?
PRODUCER_PID=
exit "$status"

#!/usr/bin/env bash
# The local demo: Spark's Kinesis word count end to end on local emulators,
# with no AWS account. Installs and starts the emulators on 127.0.0.1,
# creates a stream, runs the producer and the word count for a short while
# (DEMO_SECONDS, default 20), and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh

seconds="${DEMO_SECONDS:-20}"
echo "building the examples..." >&2
cargo build --quiet --examples
target_dir="${CARGO_TARGET_DIR:-target}"

start_emulators
trap 'kill $EMULATOR_PIDS ${PRODUCER_PID:-} 2>/dev/null || true' EXIT
echo "kinesis-local at $KINESIS_URL, dynalite at $DYNAMODB_URL" >&2

export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=local-demo AWS_SECRET_ACCESS_KEY=local-demo AWS_EC2_METADATA_DISABLED=true
export AWS_ENDPOINT_URL_KINESIS="$KINESIS_URL" AWS_ENDPOINT_URL_DYNAMODB="$DYNAMODB_URL"
export RUST_LOG="${RUST_LOG:-warn}"

"$target_dir/debug/examples/producer" --stream words --create-shards 2 --duration-secs 0 >/dev/null
echo "created stream words with 2 shards; producing for $seconds s" >&2
"$target_dir/debug/examples/producer" --stream words --records-per-sec 50 --words-per-record 5 \
  --duration-secs "$seconds" &
PRODUCER_PID=$!
# SIGINT after the producer is done: the word count stops gracefully.
timeout -s INT "$((seconds + 5))" "$target_dir/debug/examples/word_count" --stream words --app word-count-demo \
  --batch-interval-ms 2000 --top 5 || [ $? -eq 124 ]
wait "$PRODUCER_PID"

#!/usr/bin/env bash
# Checks scripts/playground.sh the way a user runs it (run by .ci/run): start
# it with a stream, source its export lines, put records with the producer
# example, read them back with the tail example, stop the playground with
# SIGINT (Ctrl-C), and check that every process it started has stopped.
# The records are read twice: polling, then through enhanced fan-out (the
# consumer deregistered afterwards, as docs/local.md says).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

echo "playground check: building the examples..." >&2
cargo build --example producer --example tail --example leases
target_dir="${CARGO_TARGET_DIR:-target}"

work=$(mktemp -d)
playground="" tail_pid=""
cleanup() {
  if [ -n "$tail_pid" ]; then kill -KILL "$tail_pid" 2>/dev/null || true; fi
  if [ -n "$playground" ]; then kill "$playground" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "playground check failed: $*" >&2
  for f in "$work"/*.log; do
    echo "--- $f" >&2
    tail -n 20 "$f" >&2
  done
  exit 1
}

stream="playground-check-$$"
# Job control on: the playground runs in its own process group and, unlike a
# background job of a plain script, does not ignore SIGINT.
set -m
bash scripts/playground.sh --create-stream "$stream" --shards 2 --env-file "$work/env" \
  >"$work/playground.log" 2>"$work/playground-stderr.log" &
playground=$!
set +m

for _ in $(seq 1 1200); do
  if [ -f "$work/env" ] || ! kill -0 "$playground" 2>/dev/null; then break; fi
  sleep 0.1
done
[ -f "$work/env" ] || fail "no export lines after 120 s"
# shellcheck disable=SC1091 # written by the playground above
source "$work/env"
pids=$(sed -n 's/.*(PIDs: \(.*\)).*/\1/p' "$work/env")
[ -n "$pids" ] || fail "the playground reported no PIDs"
grep -q '^export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:' "$work/playground.log" ||
  fail "the playground printed no export lines"
echo "playground up in $((SECONDS - started)) s: $pids" >&2

"$target_dir/debug/examples/producer" --stream "$stream" --records-per-sec 20 --duration-secs 1 \
  >"$work/producer.log" 2>&1 || fail "the producer failed"
records=$(sed -n 's/.* as \([0-9]*\) Kinesis records .*/\1/p' "$work/producer.log")
[ "${records:-0}" -gt 0 ] || fail "the producer put no records"

"$target_dir/debug/examples/tail" --stream "$stream" --app "$stream" --position trim-horizon \
  --batch-interval-ms 500 >"$work/tail.log" 2>"$work/tail-stderr.log" &
tail_pid=$!
seen=0
for _ in $(seq 1 300); do
  seen=$({ grep -o '"sequence_number":"[0-9]*"' "$work/tail.log" || true; } | sort -u | wc -l)
  if [ "$seen" -ge "$records" ]; then break; fi
  sleep 0.1
done
kill -INT "$tail_pid"
wait "$tail_pid" || fail "tail exited with status $?"
tail_pid=""
[ "$seen" -eq "$records" ] || fail "tail printed $seen distinct records of $records put"
echo "tail printed $seen distinct records" >&2

# Again through enhanced fan-out (SubscribeToShard, h2c on kinesis-local's
# plain port), under an application of its own, then deregister the consumer.
"$target_dir/debug/examples/tail" --stream "$stream" --app "$stream-efo" --position trim-horizon \
  --batch-interval-ms 500 --enhanced-fan-out "$stream-efo" >"$work/tail-efo.log" 2>"$work/tail-efo-stderr.log" &
tail_pid=$!
seen=0
for _ in $(seq 1 300); do
  seen=$({ grep -o '"sequence_number":"[0-9]*"' "$work/tail-efo.log" || true; } | sort -u | wc -l)
  if [ "$seen" -ge "$records" ]; then break; fi
  sleep 0.1
done
kill -INT "$tail_pid"
wait "$tail_pid" || fail "tail (fan-out) exited with status $?"
tail_pid=""
[ "$seen" -eq "$records" ] || fail "tail (fan-out) printed $seen distinct records of $records put"
"$target_dir/debug/examples/leases" --stream "$stream" --deregister-consumer "$stream-efo" \
  >"$work/deregister.log" 2>&1 || fail "deregistering the fan-out consumer failed"
grep -q "^deregistered consumer $stream-efo " "$work/deregister.log" ||
  fail "leases --deregister-consumer said no deregistration"
echo "tail printed $seen distinct records through enhanced fan-out; consumer deregistered" >&2

kill -INT "$playground"
status=0
wait "$playground" || status=$?
playground=""
[ "$status" -eq 0 ] || fail "the playground exited with status $status after SIGINT"
for entry in $pids; do
  if kill -0 "${entry#*=}" 2>/dev/null; then
    fail "${entry%%=*} (PID ${entry#*=}) still runs after the playground stopped"
  fi
done
echo "playground check: passed in $((SECONDS - started)) s; stopped $pids" >&2

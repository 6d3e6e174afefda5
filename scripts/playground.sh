#!/usr/bin/env bash
# A local playground for your own consumer: installs (if missing) and starts
# the local emulators on 127.0.0.1 (see scripts/emulators.sh), prints the
# `export` lines to paste into another shell, and stays up until Ctrl-C
# (SIGINT) or SIGTERM, then stops exactly the processes it started.
set -euo pipefail

usage="usage: scripts/playground.sh [--create-stream NAME [--shards N (1)]] [--cloudwatch] [--env-file PATH]

Starts kinesis-local (Kinesis) and dynalite (DynamoDB) on free 127.0.0.1 ports
and prints the export lines (region, dummy keys, IMDS off, endpoint URLs) that
point a program using the standard AWS environment at them. Stays up until
Ctrl-C or SIGTERM, then stops what it started. State is in memory only.

  --create-stream NAME  create a stream NAME (with the producer example, built
                        by cargo if needed)
  --shards N            its shard count (default 1)
  --cloudwatch          also start moto as CloudWatch (needs Python 3 and pip;
                        installs moto[server] 5.2.5 if missing)
  --env-file PATH       also write the export lines to PATH once everything
                        is up (with a comment line listing the PIDs started)"

stream="" shards="" cloudwatch=false env_file=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) echo "$usage"; exit 0 ;;
    --create-stream | --shards | --env-file)
      if [ $# -lt 2 ]; then
        echo "error: $1 needs a value" >&2; echo "$usage" >&2; exit 2
      fi
      case "$1" in
        --create-stream) stream="$2" ;;
        --shards) shards="$2" ;;
        --env-file) env_file="$2" ;;
      esac
      shift 2 ;;
    --cloudwatch) cloudwatch=true; shift ;;
    *) echo "error: unknown argument $1" >&2; echo "$usage" >&2; exit 2 ;;
  esac
done
if [ -n "$shards" ] && [ -z "$stream" ]; then
  echo "error: --shards goes with --create-stream" >&2; echo "$usage" >&2; exit 2
fi
case "${shards:-1}" in
  '' | *[!0-9]* | 0) echo "error: --shards must be a positive whole number" >&2; exit 2 ;;
esac
if [ -n "$env_file" ]; then
  env_file="$(cd "$(dirname "$env_file")" && pwd)/$(basename "$env_file")"
fi

cd "$(dirname "$0")/.."
source scripts/emulators.sh

sleeper=""
cleanup() {
  if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null || true; fi
  if [ -n "$EMULATOR_PIDS" ]; then
    echo "stopping $EMULATOR_NAMES" >&2
    stop_emulators
  fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM

echo "starting the emulators (installing them first if missing)..." >&2
start_emulators
if $cloudwatch; then
  start_moto
fi
exports="$(emulator_exports)"

if [ -n "$stream" ]; then
  echo "creating stream $stream with ${shards:-1} shard(s) (the producer example, built if needed)..." >&2
  (eval "$exports" && cargo run --example producer -- --stream "$stream" --create-shards "${shards:-1}" \
    --duration-secs 0 >/dev/null)
fi

text="# The local emulators are up. Paste these lines into the shell that runs your program:
$exports
# Ctrl-C here stops the emulators (PIDs: $EMULATOR_NAMES); their state is lost."
if [ -n "$env_file" ]; then
  printf '%s\n' "$text" >"$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
fi
printf '%s\n' "$text"

# Up until a signal; a stopped emulator stops the playground.
while :; do
  for entry in $EMULATOR_NAMES; do
    if ! kill -0 "${entry#*=}" 2>/dev/null; then
      echo "error: ${entry%%=*} (PID ${entry#*=}) exited; stopping" >&2
      forget_pid "${entry#*=}"
      exit 1
    fi
  done
  sleep 1 &
  sleeper=$!
  wait "$sleeper" || true
  sleeper=""
done

#!/usr/bin/env bash
# Runs every benchmark and prints its figures (about 8-9 minutes on 2 cores).
# Builds with --release into $CARGO_TARGET_DIR (default target/bench) and,
# for the official SDK comparison, $SDK_TARGET_DIR (default target/bench-sdk).
# Installs the pinned emulators (npm ci in emulators/) when missing.
# Usage: bash bench/run.sh [throughput|fan_out_throughput|scale|pressure|burst|fan_out_burst|latency|fan_out_latency|decoders|leases|processors|observe|multi_stream|fleet|fleet_simulated ...]
# (fleet, about 15 minutes, and fleet_simulated, `fleet --simulated`: in-process
# workers on the lease simulation's table, a few minutes, run only when named)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/bench}"
sdk_target="${SDK_TARGET_DIR:-$root/target/bench-sdk}"
if [ ! -f emulators/node_modules/kinesalite/cli.js ] || [ ! -f emulators/node_modules/dynalite/cli.js ] || [ ! -f emulators/node_modules/kinesis-local/main.js ]; then
  (cd emulators && npm ci --no-audit --no-fund --loglevel=error)
fi
cargo build --release --quiet --manifest-path bench/Cargo.toml
CARGO_TARGET_DIR="$sdk_target" cargo build --release --quiet --manifest-path bench/sdk/Cargo.toml
bin="$CARGO_TARGET_DIR/release"
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(throughput fan_out_throughput scale pressure burst fan_out_burst latency fan_out_latency decoders leases processors observe multi_stream)
echo "# kinesis-consumer benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -h | awk '/^Mem:/ {print $2}') RAM"
started=$SECONDS
for b in "${benches[@]}"; do
  echo
  case "$b" in
    throughput | fan_out_throughput) timeout 300 "$bin/$b" --sdk "$sdk_target/release/kinesis-sdk-bench" ;;
    fleet) timeout 2400 "$bin/fleet" ;;
    fleet_simulated) timeout 1200 "$bin/fleet" --simulated ;;
    *) timeout 300 "$bin/$b" ;;
  esac
done
echo
echo "# all benchmarks ran in $((SECONDS - started)) s"

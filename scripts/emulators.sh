# shellcheck shell=bash
# The one place that knows how to install and start the local emulators.
# Sourced by scripts/demo.sh, scripts/playground.sh and scripts/test.sh.
#
#   start_emulators   installs the pinned npm emulators if missing and starts
#                     kinesis-local and dynalite on free 127.0.0.1 ports; sets
#                     KINESIS_URL and DYNAMODB_URL
#   start_moto        installs moto (tests/metrics/requirements.txt) if missing
#                     and starts it (CloudWatch) on a free 127.0.0.1 port; sets
#                     CLOUDWATCH_URL
#   emulator_exports  prints the `export` lines that point a program (the AWS
#                     environment: region, dummy keys, IMDS off, endpoints) at
#                     the emulators started
#   stop_emulators    stops what the two started (by PID) and waits for them
#
# Each started process's PID is appended to EMULATOR_PIDS (with its name, as
# "name=pid", in EMULATOR_NAMES). They also exit by themselves soon after the
# shell that started them does (emulators/loopback.js,
# tests/metrics/moto_server.py), so an interrupted run leaves nothing behind.

emulators_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../emulators" && pwd)"
EMULATOR_PIDS="${EMULATOR_PIDS:-}"
EMULATOR_NAMES="${EMULATOR_NAMES:-}"

install_emulators() {
  if [ ! -f "$emulators_dir/node_modules/kinesis-local/main.js" ] || [ ! -f "$emulators_dir/node_modules/dynalite/cli.js" ]; then
    (cd "$emulators_dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# Debian's Prometheus server and headless Chromium, for the observability
# tests (tests/observe.rs): installed once with apt-get when missing.
install_observe_tools() {
  if ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus chromium >/dev/null
  fi
}

install_moto() {
  if ! python3 -c "import moto, moto.server, flask; assert moto.__version__ == '5.2.5'" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check -r "$emulators_dir/../tests/metrics/requirements.txt"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "error: nothing listens on 127.0.0.1:$1 after 30 s" >&2
  return 1
}

# Records a started process: remember_pid NAME PID.
remember_pid() {
  EMULATOR_PIDS="${EMULATOR_PIDS:+$EMULATOR_PIDS }$2"
  EMULATOR_NAMES="${EMULATOR_NAMES:+$EMULATOR_NAMES }$1=$2"
}

# Forgets a process that already exited (and was reaped): forget_pid PID.
forget_pid() {
  local pid entry pids="" names=""
  for pid in $EMULATOR_PIDS; do
    if [ "$pid" != "$1" ]; then pids="${pids:+$pids }$pid"; fi
  done
  for entry in $EMULATOR_NAMES; do
    if [ "${entry#*=}" != "$1" ]; then names="${names:+$names }$entry"; fi
  done
  EMULATOR_PIDS="$pids"
  EMULATOR_NAMES="$names"
}

start_emulators() {
  install_emulators
  local kport tport dport pkg="$emulators_dir/node_modules/kinesis-local"
  kport=$(free_port); tport=$(free_port); dport=$(free_port)
  (cd "$pkg" && KINESIS_MOCK_CERT_PATH="$pkg/server.json" KINESIS_MOCK_PLAIN_PORT=$kport KINESIS_MOCK_TLS_PORT=$tport \
    LOG_LEVEL=WARN CREATE_STREAM_DURATION=50ms exec node -r "$emulators_dir/loopback.js" main.js) >/dev/null 2>&1 &
  remember_pid kinesis-local $!
  node -r "$emulators_dir/loopback.js" "$emulators_dir/node_modules/dynalite/cli.js" --host 127.0.0.1 --port "$dport" \
    --createTableMs 0 --deleteTableMs 0 --updateTableMs 0 >/dev/null 2>&1 &
  remember_pid dynalite $!
  wait_for_port "$kport"
  wait_for_port "$dport"
  KINESIS_URL="http://127.0.0.1:$kport"
  DYNAMODB_URL="http://127.0.0.1:$dport"
}

start_moto() {
  install_moto
  local port
  port=$(free_port)
  python3 "$emulators_dir/../tests/metrics/moto_server.py" "$port" >/dev/null 2>&1 &
  remember_pid moto $!
  wait_for_port "$port"
  CLOUDWATCH_URL="http://127.0.0.1:$port"
}

emulator_exports() {
  # Dummy keys: the emulators check no signature, but the crate signs every request.
  echo "export AWS_REGION=us-east-1"
  echo "export AWS_ACCESS_KEY_ID=local-emulator"
  echo "export AWS_SECRET_ACCESS_KEY=local-emulator"
  echo "export AWS_EC2_METADATA_DISABLED=true"
  echo "export AWS_ENDPOINT_URL_KINESIS=$KINESIS_URL"
  echo "export AWS_ENDPOINT_URL_DYNAMODB=$DYNAMODB_URL"
  if [ -n "${CLOUDWATCH_URL:-}" ]; then
    echo "export AWS_ENDPOINT_URL_CLOUDWATCH=$CLOUDWATCH_URL"
  fi
}

stop_emulators() {
  local pid entry alive _
  for pid in $EMULATOR_PIDS; do
    kill "$pid" 2>/dev/null || true
  done
  # kinesis-local's graceful shutdown waits for clients still connected (a
  # consumer still polling): give everything 3 s, then kill what is left.
  for _ in $(seq 1 30); do
    alive=""
    for entry in $EMULATOR_NAMES; do
      if kill -0 "${entry#*=}" 2>/dev/null; then alive="$alive $entry"; fi
    done
    if [ -z "$alive" ]; then break; fi
    sleep 0.1
  done
  for entry in $alive; do
    echo "${entry%%=*} (PID ${entry#*=}) still runs 3 s after SIGTERM (a client still connected?); sending SIGKILL" >&2
    kill -KILL "${entry#*=}" 2>/dev/null || true
  done
  for pid in $EMULATOR_PIDS; do
    wait "$pid" 2>/dev/null || true
  done
  EMULATOR_PIDS=""
  EMULATOR_NAMES=""
}

# Sourced by scripts/demo.sh: installs the pinned emulators if missing and
# starts kinesis-local and dynalite on free 127.0.0.1 ports. They exit by
# themselves when the shell that started them does (emulators/loopback.js).
# Sets KINESIS_URL, DYNAMODB_URL and EMULATOR_PIDS.

emulators_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../emulators" && pwd)"

install_emulators() {
  if [ ! -f "$emulators_dir/node_modules/kinesis-local/main.js" ] || [ ! -f "$emulators_dir/node_modules/dynalite/cli.js" ]; then
    (cd "$emulators_dir" && npm ci --no-audit --no-fund --loglevel=error)
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

start_emulators() {
  install_emulators
  local kport tport dport pkg="$emulators_dir/node_modules/kinesis-local"
  kport=$(free_port); tport=$(free_port); dport=$(free_port)
  (cd "$pkg" && KINESIS_MOCK_CERT_PATH="$pkg/server.json" KINESIS_MOCK_PLAIN_PORT=$kport KINESIS_MOCK_TLS_PORT=$tport \
    LOG_LEVEL=WARN CREATE_STREAM_DURATION=50ms exec node -r "$emulators_dir/loopback.js" main.js) >/dev/null 2>&1 &
  EMULATOR_PIDS="$!"
  node -r "$emulators_dir/loopback.js" "$emulators_dir/node_modules/dynalite/cli.js" --host 127.0.0.1 --port "$dport" \
    --createTableMs 0 --deleteTableMs 0 --updateTableMs 0 >/dev/null 2>&1 &
  EMULATOR_PIDS="$EMULATOR_PIDS $!"
  wait_for_port "$kport"
  wait_for_port "$dport"
  KINESIS_URL="http://127.0.0.1:$kport"
  DYNAMODB_URL="http://127.0.0.1:$dport"
}

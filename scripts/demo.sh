#!/usr/bin/env bash
# The main job on one machine: set everything up, then run the broker and an
# edge agent on a sample video (cloud ingest and the web UI join here as they land).
# Ctrl-C stops everything cleanly. Logs: var/log/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BIN=${EMQ_VENV:-.venv}/bin
DEVICE=${EMQ_DEMO_DEVICE:-demo-cam}
mkdir -p var/log

# The product must run without our test media: make a sample from a portrait
# that matplotlib ships, unless the user names a source.
SOURCE=${EMQ_DEMO_SOURCE:-$("$BIN/python" -m edge.sample var/sample/demo.mp4)}

port_in_use() { "$BIN/python" -c "import sys; from broker.runner import port_accepts; sys.exit(0 if port_accepts('127.0.0.1', $1) else 1)"; }
for port in 8883 8884; do
  if port_in_use "$port"; then
    echo "port $port is already in use (another broker, or an earlier demo still running?); stop it first" >&2
    exit 1
  fi
done

pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

EMQ_BROKER__BIND_ADDRESS=${EMQ_BROKER__BIND_ADDRESS:-127.0.0.1} "$BIN/emq-broker" run >var/log/broker.log 2>&1 &
pids+=($!)
"$BIN/python" -c 'from broker.runner import wait_for_port; wait_for_port("127.0.0.1", 8883, 10)' \
  || { echo "broker did not start; see var/log/broker.log" >&2; exit 1; }

cat <<INFO

  Broker:  mqtts://localhost:8883 (client certificates), :8884 (passwords)   log: var/log/broker.log
  Edge:    device '$DEVICE' on $SOURCE (looping)

  Watch the results in another terminal:
    mosquitto_sub -h localhost -p 8883 --cafile var/pki/ca.crt --cert var/pki/clients/monitor.crt --key var/pki/clients/monitor.key -t 'emotion/devices/+/result' | $BIN/emq-validate --summary

  Ctrl-C stops everything.

INFO

"$BIN/emq-edge" --device-id "$DEVICE" --source "$SOURCE" --loop --pace &
pids+=($!)
wait -n "${pids[@]}"

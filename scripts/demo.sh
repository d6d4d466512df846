#!/usr/bin/env bash
# The main job on one machine: set everything up, then run the broker, the
# cloud ingest (SQLite + files under var/cloud), the web dashboard and an edge
# agent on a sample video.
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
for port in 8883 8884 8080; do
  if port_in_use "$port"; then
    echo "port $port is already in use (another broker, or an earlier demo still running?); stop it first" >&2
    exit 1
  fi
done

pids=()
cleanup() {
  # Reverse start order: the edge flushes its outbox while ingest and broker still run.
  trap - EXIT INT TERM
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

EMQ_BROKER__BIND_ADDRESS=${EMQ_BROKER__BIND_ADDRESS:-127.0.0.1} "$BIN/emq-broker" run >var/log/broker.log 2>&1 &
pids+=($!)
"$BIN/python" -c 'from broker.runner import wait_for_port; wait_for_port("127.0.0.1", 8883, 10)' \
  || { echo "broker did not start; see var/log/broker.log" >&2; exit 1; }

"$BIN/emq-ingest" >var/log/ingest.log 2>&1 &
pids+=($!)
"$BIN/emq-webui" >var/log/webui.log 2>&1 &
pids+=($!)
WEBUI_PASSWORD=$(cat var/webui/initial-admin-password 2>/dev/null || echo "(set earlier; reset: $BIN/emq-webui create-user admin --role admin --replace)")

cat <<INFO

  Broker:  mqtts://localhost:8883 (client certificates), :8884 (passwords)   log: var/log/broker.log
  Ingest:  var/cloud/emotion.db (SQLite), frames under var/cloud/data   log: var/log/ingest.log
  Web UI:  http://127.0.0.1:8080   user: admin   password: $WEBUI_PASSWORD   log: var/log/webui.log
  Edge:    device '$DEVICE' on $SOURCE (looping)

  Watch the results in another terminal:
    mosquitto_sub -h localhost -p 8883 --cafile var/pki/ca.crt --cert var/pki/clients/monitor.crt --key var/pki/clients/monitor.key -t 'emotion/devices/+/result' | $BIN/emq-validate --summary

  Ctrl-C stops everything.

INFO

"$BIN/emq-edge" --device-id "$DEVICE" --source "$SOURCE" --loop --pace &
pids+=($!)
wait -n "${pids[@]}"

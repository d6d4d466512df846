#!/usr/bin/env bash
# The main job on one machine: set everything up, then run the broker, the
# cloud ingest (SQLite + files under var/cloud), the web dashboard and an edge
# agent on a sample video.
# Ctrl-C stops everything cleanly, the edge first and the broker last
# (scripts/services.sh). Logs: var/log/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BIN=${EMQ_VENV:-.venv}/bin
DEVICE=${EMQ_DEMO_DEVICE:-demo-cam}

# The product must run without our test media: make a sample from a portrait
# that matplotlib ships, unless the user names a source.
SOURCE=${EMQ_DEMO_SOURCE:-$("$BIN/python" scripts/sample_video.py var/sample/demo.mp4)}

port_in_use() { "$BIN/python" -c "import sys; from broker.runner import port_accepts; sys.exit(0 if port_accepts('127.0.0.1', $1) else 1)"; }
for port in 8883 8884 8080; do
  if port_in_use "$port"; then
    echo "port $port is already in use (another broker, or an earlier demo still running?); stop it first" >&2
    exit 1
  fi
done

WEBUI_PASSWORD=$(cat var/webui/initial-admin-password 2>/dev/null || echo "(set earlier; reset: $BIN/emq-webui create-user admin --role admin --replace)")

cat <<INFO

  Broker:  mqtts://localhost:8883 (client certificates), :8884 (passwords)   log: var/log/broker.log
  Ingest:  var/cloud/emotion.db (SQLite), frames under var/cloud/data   log: var/log/ingest.log
  Web UI:  http://127.0.0.1:8080   user: admin   password: $WEBUI_PASSWORD   log: var/log/webui.log
  Edge:    device '$DEVICE' on $SOURCE (looping)   log: this terminal

  Watch the results in another terminal:
    mosquitto_sub -h localhost -p 8883 --cafile var/pki/ca.crt --cert var/pki/clients/monitor.crt --key var/pki/clients/monitor.key -t 'emotion/devices/+/result' | $BIN/emq-validate --summary

  Ctrl-C stops everything in reverse order: the edge (after flushing its outbox), web UI, ingest, broker.

INFO

# Each service in its own session, stopped one by one by services.sh's trap (see there).
EMQ_VENV=${EMQ_VENV:-.venv} EMQ_DEMO_SOURCE=$SOURCE EMQ_DEMO_DEVICE=$DEVICE EMQ_DEMO_LOG_DIR=var/log exec scripts/services.sh

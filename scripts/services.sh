#!/usr/bin/env bash
# Run the broker, the cloud ingest, the web dashboard and an edge agent until
# Ctrl-C (or SIGTERM), then stop them in reverse order, each waited for with a
# time limit: the edge first, so it flushes its outbox while the ingest and
# the broker still run; the broker last. scripts/demo.sh sets everything up
# and then runs this. The services read their settings from their own EMQ_*
# variables; this script reads:
#   EMQ_DEMO_SOURCE     the edge's source (required)
#   EMQ_DEMO_DEVICE     the edge's device id (demo-cam)
#   EMQ_DEMO_EDGE_ARGS  more emq-edge arguments ("--loop --pace")
#   EMQ_DEMO_LOG_DIR    where the logs go (var/log); the edge logs to this terminal
#   EMQ_VENV            the virtualenv (.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${EMQ_VENV:-.venv}/bin
SOURCE=${EMQ_DEMO_SOURCE:?EMQ_DEMO_SOURCE must name the edge source}
DEVICE=${EMQ_DEMO_DEVICE:-demo-cam}
read -r -a EDGE_ARGS <<<"${EMQ_DEMO_EDGE_ARGS:---loop --pace}"
LOG_DIR=${EMQ_DEMO_LOG_DIR:-var/log}
mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)

say() { echo "services: $*"; }

names=() pids=() limits=()

# start NAME STOP_LIMIT_S LOG|- COMMAND...
# Each service runs in a session of its own (setsid): a Ctrl-C in the terminal
# then reaches only this script, whose trap stops the services one by one.
# Without it the terminal signals every process at once, and the broker may be
# gone before the edge has flushed its outbox.
start() {
  local name=$1 limit=$2 log=$3
  shift 3
  if [[ $log == - ]]; then
    setsid "$@" &
    say "started $name (pid $!)"
  else
    setsid "$@" >>"$log" 2>&1 &
    say "started $name (pid $!, log $log)"
  fi
  names+=("$name") pids+=("$!") limits+=("$limit")
}

# stop INDEX: SIGTERM to the service's process group, wait up to its limit, then SIGKILL.
stop() {
  local name=${names[$1]} pid=${pids[$1]} limit=${limits[$1]} tenths=0 status=0
  say "stopping $name"
  kill -TERM -- "-$pid" 2>/dev/null || true
  # bash reaps its children as they exit, so kill -0 fails once the service is gone.
  while kill -0 "$pid" 2>/dev/null && ((tenths < limit * 10)); do
    sleep 0.1
    tenths=$((tenths + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop within $limit s; killing it" >&2
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  say "$name stopped (exit $status)"
}

stopped=0
stop_all() {
  [[ $stopped == 1 ]] && return 0
  stopped=1
  trap '' INT TERM  # a second Ctrl-C must not cut the orderly stop short (each stop is time-limited)
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "$i"; done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT

# Mosquitto writes its log file itself (line by line, so a killed broker's last
# lines survive); its start-up errors on stderr land in the same file.
BROKER_LOG="$LOG_DIR/broker.log"
: >"$BROKER_LOG"
start broker 10 "$BROKER_LOG" env EMQ_BROKER__BIND_ADDRESS="${EMQ_BROKER__BIND_ADDRESS:-127.0.0.1}" \
  EMQ_BROKER__LOG_DEST="${EMQ_BROKER__LOG_DEST:-file $BROKER_LOG}" "$BIN/emq-broker" run
"$BIN/python" -c "from broker.runner import wait_for_port; wait_for_port('127.0.0.1', ${EMQ_BROKER__TLS_PORT:-8883}, 10)" \
  || { echo "broker did not start; see $BROKER_LOG" >&2; exit 1; }
start ingest 15 "$LOG_DIR/ingest.log" "$BIN/emq-ingest"
start webui 10 "$LOG_DIR/webui.log" "$BIN/emq-webui"
# The edge's flush is bounded by its outbox.flush_timeout_s (10 s by default).
start edge 20 - "$BIN/emq-edge" --device-id "$DEVICE" --source "$SOURCE" "${EDGE_ARGS[@]}"

wait -n "${pids[@]}" || true
say "a service ended on its own; stopping the others" >&2

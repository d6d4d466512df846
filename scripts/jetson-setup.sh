#!/usr/bin/env bash
# Set up an NVIDIA Jetson (JetPack 4.6, 5.x or 6.x) as an emotion-mqtt edge device, from this checkout:
# a Python >= 3.10, a virtualenv with only the edge extra, the device's certificates, a config for
# its CSI camera (or another source), the model store and the systemd unit. Idempotent: a second run
# keeps an existing config (it writes edge.toml.new beside it) and reuses the virtualenv.
#
#   sudo scripts/jetson-setup.sh --device-id cam-kitchen --broker broker.example.org \
#        --ca ca.crt --cert cam-kitchen.crt --key cam-kitchen.key [options]
#   scripts/jetson-setup.sh --dry-run ...     print every step, change nothing (no root needed)
#
# Python by JetPack (override with --python PATH or --python-tarball FILE):
#   JetPack 6 (L4T R36, Ubuntu 22.04)  python3.10 from Ubuntu
#   JetPack 5 (L4T R34/35, Ubuntu 20.04, Python 3.8)  python3.11 from the deadsnakes PPA, or a tarball
#   JetPack 4.6 (L4T R32, Ubuntu 18.04, Python 3.6)  a python-build-standalone tarball the owner
#       downloads (cpython-3.11.*-aarch64-unknown-linux-gnu-install_only.tar.gz), or one built from
#       source (docs/deploy.md), passed with --python-tarball or --python
#
# EMQ_JETSON_ROOT (default /): operate on files under that directory instead of / (for tests and
# for inspecting what a run writes). With any other root, the steps that change the running
# system (apt-get, useradd, chown, systemctl, running the new Python) are printed and skipped.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${EMQ_JETSON_ROOT:-/}
ROOT=${ROOT%/}            # "" for the real system: "$ROOT/etc/..." is then "/etc/..."
PREFIX=/opt/emotion-mqtt
CONFIG_DIR=/etc/emotion-mqtt
STATE_DIR=/var/lib/emq-edge
UNIT=/etc/systemd/system/emq-edge.service
SERVICE_USER=emq
MIN_PYTHON=3.10

DRY_RUN=0 SKIP_VENV=0 START=1
DEVICE_ID="" BROKER="" PORT=8883 CA="" CERT="" KEY="" MODELS="" PYTHON="" PYTHON_TARBALL=""
SOURCE="" SENSOR_ID=0 SENSOR_MODE="" WIDTH=1280 HEIGHT=720 FPS=30 FLIP_METHOD=0 MAX_FPS=15

usage() {
  cat <<'EOF'
Usage: scripts/jetson-setup.sh --device-id ID --broker HOST --ca FILE --cert FILE --key FILE [options]

  --device-id ID         the device identity (its certificate's CN: emq-pki add ID)
  --broker HOST          the broker's host name (in the broker certificate)
  --port N               broker TLS port (8883)
  --ca, --cert, --key    ca.crt, clients/ID.crt, clients/ID.key from the PKI (the key ends up 0600)
  --models DIR           converted model store to install (default: the checkout's models/store)
  --python PATH          use this Python (>= 3.10)
  --python-tarball FILE  unpack this python-build-standalone install_only tarball and use it
  --source SPEC          source.spec (default csi:<sensor id>; e.g. camera:0 for a USB camera)
  --sensor-id N --sensor-mode N --width W --height H --fps F --flip-method M
                         the CSI camera (source.csi; defaults 0, sensor's choice, 1280, 720, 30, 0)
  --max-fps F            processing.max_fps (15)
  --skip-venv            keep the virtualenv as it is (certificates, config, model, unit only)
  --no-start             install the unit but do not enable or start it
  --dry-run              print the steps, change nothing
EOF
}

log() { printf '[jetson-setup] %s\n' "$*"; }
die() { printf '[jetson-setup] error: %s\n' "$*" >&2; exit 2; }
staging() { [[ -n "$ROOT" ]]; }   # a root other than /: leave the running system alone

# Print a command in dry-run mode, else run it.
run() {
  if ((DRY_RUN)); then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# A command that changes the running system: skipped (and said so) under another root.
run_system() {
  if staging; then
    printf '+ (skipped: EMQ_JETSON_ROOT=%s)' "$ROOT"; printf ' %q' "$@"; printf '\n'
  else
    run "$@"
  fi
}

# Write stdin to a file with a mode; in dry-run mode, print the text instead.
write_file() {
  local path=$1 mode=$2 text
  text=$(cat)
  if ((DRY_RUN)); then
    printf '+ write %s (mode %s):\n%s\n' "$path" "$mode" "$text"
  else
    (umask 077 && printf '%s\n' "$text" >"$path")
    chmod "$mode" "$path"
  fi
}

# Options with a value, and the variable each sets.
declare -A VALUE_OPTIONS=(
  [--device-id]=DEVICE_ID [--broker]=BROKER [--port]=PORT [--ca]=CA [--cert]=CERT [--key]=KEY
  [--models]=MODELS [--python]=PYTHON [--python-tarball]=PYTHON_TARBALL [--source]=SOURCE
  [--sensor-id]=SENSOR_ID [--sensor-mode]=SENSOR_MODE [--width]=WIDTH [--height]=HEIGHT [--fps]=FPS
  [--flip-method]=FLIP_METHOD [--max-fps]=MAX_FPS
)

parse_arguments() {
  while (($#)); do
    case $1 in
      --skip-venv) SKIP_VENV=1 ;;
      --no-start) START=0 ;;
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      *)
        [[ -n "${VALUE_OPTIONS[$1]:-}" ]] || { usage >&2; die "unknown argument: $1"; }
        (($# >= 2)) || die "$1 needs a value"
        printf -v "${VALUE_OPTIONS[$1]}" '%s' "$2"
        shift ;;
    esac
    shift
  done
}

check_arguments() {
  [[ -n "$DEVICE_ID" && -n "$BROKER" && -n "$CA" && -n "$CERT" && -n "$KEY" ]] \
    || { usage >&2; die "--device-id, --broker, --ca, --cert and --key are required"; }
  [[ "$DEVICE_ID" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]] || die "--device-id $DEVICE_ID: letters, digits, - and _ only"
  local name value flag
  for name in PORT SENSOR_ID WIDTH HEIGHT FPS FLIP_METHOD; do
    value=${!name} flag=${name,,}
    [[ "$value" =~ ^[0-9]+$ ]] || die "--${flag//_/-}: not a whole number: $value"
  done
  [[ -z "$SENSOR_MODE" || "$SENSOR_MODE" =~ ^[0-9]+$ ]] || die "--sensor-mode: not a whole number: $SENSOR_MODE"
  [[ "$MAX_FPS" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--max-fps: not a number: $MAX_FPS"
  ((FLIP_METHOD <= 7)) || die "--flip-method must be 0..7"
  ((SENSOR_ID <= 7)) || die "--sensor-id must be 0..7"
  local file
  for file in "$CA" "$CERT" "$KEY"; do [[ -r "$file" ]] || die "cannot read $file"; done
  [[ -z "$PYTHON_TARBALL" || -r "$PYTHON_TARBALL" ]] || die "cannot read $PYTHON_TARBALL"
  SOURCE=${SOURCE:-csi:$SENSOR_ID}
  if ((!DRY_RUN)) && ! staging && (($(id -u) != 0)); then
    die "run as root (sudo), or with --dry-run to see the steps"
  fi
}

# The certificate must be the device's and match its key: the mistakes that otherwise show up
# only as a TLS failure on the device.
check_certificates() {
  command -v openssl >/dev/null || { log "openssl missing: certificate checks skipped"; return; }
  local subject cert_key key_key
  subject=$(openssl x509 -in "$CERT" -noout -subject -nameopt multiline 2>/dev/null) || die "$CERT is not a PEM certificate"
  [[ "$subject" =~ commonName[[:space:]]*=[[:space:]]*([^[:space:]]+) && "${BASH_REMATCH[1]}" == "$DEVICE_ID" ]] \
    || die "$CERT is not the certificate of $DEVICE_ID (its subject: ${subject//$'\n'/ })"
  cert_key=$(openssl x509 -in "$CERT" -noout -pubkey)
  key_key=$(openssl pkey -in "$KEY" -pubout 2>/dev/null) || die "$KEY is not a PEM private key"
  [[ "$cert_key" == "$key_key" ]] || die "$KEY is not the key of $CERT"
}

# -- JetPack / L4T ----------------------------------------------------------------------------------

# L4T version (e.g. 32.7.1) from /etc/nv_tegra_release, else from the nvidia-l4t-core package.
detect_l4t() {
  local release="$ROOT/etc/nv_tegra_release" line version
  if [[ -r "$release" ]]; then
    line=$(head -n 1 "$release")
    # "# R32 (release), REVISION: 7.1, GCID: ..., BOARD: t186ref, EABI: aarch64, DATE: ..."
    if [[ "$line" =~ R([0-9]+)\ \(release\),\ REVISION:\ ([0-9]+)\.([0-9]+) ]]; then
      echo "${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
      return
    fi
    log "cannot read the release line of $release: $line" >&2
  fi
  if command -v dpkg-query >/dev/null && [[ -d "$ROOT/var/lib/dpkg" ]]; then
    # "35.4.1-20230801124926"
    # shellcheck disable=SC2016  # ${Version} is dpkg-query's field, not a shell variable
    if version=$(dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Version}' nvidia-l4t-core 2>/dev/null) && [[ -n "$version" ]]; then
      echo "${version%%-*}"
      return
    fi
  fi
  die "not a Jetson: no readable $ROOT/etc/nv_tegra_release and no nvidia-l4t-core package"
}

# JetPack release for an L4T version (NVIDIA's release table); the major version decides the rest.
jetpack_for() {
  case $1 in
    32.6.1) echo 4.6 ;; 32.7.1) echo 4.6.1 ;; 32.7.2) echo 4.6.2 ;; 32.7.3) echo 4.6.3 ;;
    32.7.4) echo 4.6.4 ;; 32.7.5) echo 4.6.5 ;; 32.7.6) echo 4.6.6 ;;
    35.1.0) echo 5.0.2 ;; 35.2.1) echo 5.1 ;; 35.3.1) echo 5.1.1 ;; 35.4.1) echo 5.1.2 ;;
    35.5.0) echo 5.1.3 ;; 35.6.0) echo 5.1.4 ;;
    36.3.0) echo 6.0 ;; 36.4.0) echo 6.1 ;; 36.4.3) echo 6.2 ;;
    32.*) echo 4.x ;; 34.* | 35.*) echo 5.x ;; 36.*) echo 6.x ;;
    *) echo unknown ;;
  esac
}

# -- Python >= 3.10 ---------------------------------------------------------------------------------

python_is_new_enough() {
  "$1" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" 2>/dev/null
}

# An installed Python >= 3.10 under the root, newest first; empty if none.
find_python() {
  local candidate
  for candidate in "$ROOT$PREFIX/python/bin/python3" "$ROOT"/usr/bin/python3.{13,12,11,10} \
    "$ROOT"/usr/local/bin/python3.{13,12,11,10} "$ROOT"/opt/python*/bin/python3; do
    if [[ -x "$candidate" ]] && python_is_new_enough "$candidate"; then
      echo "$candidate"
      return
    fi
  done
}

# Sets PYTHON to a Python >= 3.10, installing one the way this JetPack allows.
provide_python() {
  local family=$1
  if [[ -n "$PYTHON" ]]; then
    ((DRY_RUN)) || python_is_new_enough "$PYTHON" || die "$PYTHON is not Python >= $MIN_PYTHON"
    log "Python: $PYTHON (given)"
    return
  fi
  if [[ -n "$PYTHON_TARBALL" ]]; then
    unpack_python_tarball
    return
  fi
  PYTHON=$(find_python)
  if [[ -n "$PYTHON" ]]; then
    log "Python: $PYTHON (installed)"
    return
  fi
  case $family in
    6)
      log "Python: python3.10 from Ubuntu 22.04"
      run_system apt-get install -y python3.10 python3.10-venv
      PYTHON=/usr/bin/python3.10 ;;
    5)
      log "Python: python3.11 from the deadsnakes PPA (JetPack 5 has Python 3.8); if the PPA has no"
      log "        build for Ubuntu 20.04, rerun with --python-tarball (docs/deploy.md)"
      run_system apt-get install -y software-properties-common
      run_system add-apt-repository -y ppa:deadsnakes/ppa
      run_system apt-get install -y python3.11 python3.11-venv
      PYTHON=/usr/bin/python3.11 ;;
    *)
      die "JetPack $family has Python 3.6; this needs >= $MIN_PYTHON. Download a python-build-standalone
  install_only tarball for aarch64-unknown-linux-gnu (CPython 3.11, from the project's GitHub
  releases) and rerun with --python-tarball FILE, or build CPython (docs/deploy.md) and pass --python" ;;
  esac
}

# python-build-standalone: a relocatable CPython in one tarball (top folder "python/").
unpack_python_tarball() {
  local target="$PREFIX/python"
  log "Python: $PYTHON_TARBALL unpacked into $target"
  run mkdir -p "$ROOT$target"
  run tar -xzf "$PYTHON_TARBALL" -C "$ROOT$target" --strip-components=1
  PYTHON="$ROOT$target/bin/python3"
  if ((!DRY_RUN)) && ! staging; then
    # ssl, sqlite3 and ctypes are what the agent needs from the interpreter's own libraries.
    "$PYTHON" -c "import ssl, sqlite3, ctypes" || die "$PYTHON does not run on this system (glibc too old?)"
    python_is_new_enough "$PYTHON" || die "$PYTHON_TARBALL holds a Python older than $MIN_PYTHON"
  fi
}

# -- the installation steps -------------------------------------------------------------------------

install_system_packages() {
  # gst-launch-1.0 runs the camera pipeline (the pip OpenCV has no GStreamer); JetPack ships
  # nvarguscamerasrc and nvvidconv in nvidia-l4t-gstreamer.
  run_system apt-get update
  run_system apt-get install -y gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good openssl
}

create_service_user() {
  if staging || ! id "$SERVICE_USER" >/dev/null 2>&1; then
    run_system useradd --system --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  run_system usermod -aG video "$SERVICE_USER"
}

create_virtualenv() {
  local venv="$ROOT$PREFIX/venv"
  if ((SKIP_VENV)); then
    log "virtualenv: kept as it is (--skip-venv)"
    return
  fi
  run mkdir -p "$ROOT$PREFIX"
  [[ -x "$venv/bin/python" ]] || run "$PYTHON" -m venv "$venv"
  run "$venv/bin/python" -m pip install --upgrade pip
  # Only the edge extra: no TensorFlow, Flask or matplotlib on the device.
  run "$venv/bin/python" -m pip install "${REPO}[edge]"
}

install_certificates() {
  local clients="$ROOT$CONFIG_DIR/clients" owner=()
  staging || owner=(-o "$SERVICE_USER" -g "$SERVICE_USER")
  run install -d -m 0755 "$ROOT$CONFIG_DIR" "$clients"
  run install -m 0644 "$CA" "$ROOT$CONFIG_DIR/ca.crt"
  run install -m 0644 "$CERT" "$clients/$DEVICE_ID.crt"
  run install -m 0600 "${owner[@]}" "$KEY" "$clients/$DEVICE_ID.key"
}

install_models() {
  local store=${MODELS:-$REPO/models/store}
  if [[ ! -e "$store/registry.json" ]]; then
    log "no model store at $store: the agent exits with code 3 until one is at $PREFIX/models/store"
    log "(make one with 'emq-model import-pretrained' on a machine with TensorFlow, pass it with --models)"
    return
  fi
  run mkdir -p "$ROOT$PREFIX/models"
  run rm -rf "$ROOT$PREFIX/models/store"
  run cp -rL "$store" "$ROOT$PREFIX/models/store"
}

config_text() {
  cat <<EOF
# Written by scripts/jetson-setup.sh for JetPack $JETPACK (L4T $L4T). Every key: edge/config.py;
# effective values: $PREFIX/venv/bin/emq-edge --config $CONFIG_DIR/edge.toml --print-config
device_id = "$DEVICE_ID"
pki_dir = "$CONFIG_DIR"
data_dir = "$STATE_DIR"

[mqtt]
host = "$BROKER"
port = $PORT

[source]
spec = "$SOURCE"

[source.gstreamer]
backend = "subprocess"                    # gst-launch-1.0 feeds the agent: pip's OpenCV has no GStreamer

[source.csi]
sensor_id = $SENSOR_ID
EOF
  [[ -z "$SENSOR_MODE" ]] || echo "sensor_mode = $SENSOR_MODE"
  cat <<EOF
width = $WIDTH
height = $HEIGHT
fps = $FPS
flip_method = $FLIP_METHOD

[processing]
max_fps = $MAX_FPS

[publish]
frame_fps = 2
EOF
}

install_config() {
  local path="$ROOT$CONFIG_DIR/edge.toml"
  if [[ -e "$path" ]]; then
    log "$CONFIG_DIR/edge.toml exists and is kept; the settings of this run are in edge.toml.new"
    path="$path.new"
  fi
  config_text | write_file "$path" 0640
  run_system chgrp "$SERVICE_USER" "$path"
}

install_unit() {
  run mkdir -p "$(dirname "$ROOT$UNIT")"
  run install -m 0644 "$REPO/deploy/systemd/emq-edge.service" "$ROOT$UNIT"
  run_system systemctl daemon-reload
  if ((START)); then
    run_system systemctl enable --now emq-edge
  else
    log "not started (--no-start): systemctl enable --now emq-edge"
  fi
}

check_installation() {
  if ((DRY_RUN)) || staging; then
    return
  fi
  local config="$CONFIG_DIR/edge.toml"
  [[ -e "$config.new" ]] && config="$config.new"
  runuser -u "$SERVICE_USER" -- "$PREFIX/venv/bin/emq-edge" --config "$config" --print-config >/dev/null \
    || die "the agent rejects $config (see above)"
  if [[ "$SOURCE" == csi* ]]; then
    gst-inspect-1.0 nvarguscamerasrc >/dev/null 2>&1 || log "warning: no nvarguscamerasrc (nvidia-l4t-gstreamer missing?)"
    systemctl is-active --quiet nvargus-daemon || log "warning: nvargus-daemon is not running (CSI cameras need it)"
  fi
}

main() {
  parse_arguments "$@"
  check_arguments
  check_certificates
  L4T=$(detect_l4t)
  JETPACK=$(jetpack_for "$L4T")
  [[ "$JETPACK" != unknown ]] || die "L4T $L4T is not a JetPack 4.6, 5.x or 6.x release"
  log "JetPack $JETPACK (L4T $L4T)"
  [[ "$JETPACK" != 4.x ]] || log "warning: L4T $L4T is not a JetPack 4.6 release (32.6.1-32.7.x): untested"
  ((DRY_RUN)) && log "dry run: nothing is changed"
  install_system_packages
  if ((SKIP_VENV)) || [[ -x "$ROOT$PREFIX/venv/bin/python" ]]; then
    log "Python: the virtualenv's own ($PREFIX/venv)"
  else
    provide_python "${JETPACK%%.*}"
  fi
  create_service_user
  create_virtualenv
  install_certificates
  install_models
  install_config
  check_installation   # before the unit starts the agent with this config
  install_unit
  log "done: journalctl -u emq-edge -f"
}

main "$@"

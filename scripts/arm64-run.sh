#!/usr/bin/env bash
# A real aarch64 run of the edge agent on an x86-64 Debian host, under QEMU user emulation.
#
#   scripts/arm64-run.sh [all]      prepare, then run emq-edge in the arm64 chroot against a TLS broker
#                                   started here, and check its results against the contract
#   scripts/arm64-run.sh prepare    only build/refresh the cached arm64 userland and its venv
#   scripts/arm64-run.sh frames N   the first N frames of $EMQ_ARM64_SOURCE as JPEGs (prints the folder)
#   scripts/arm64-run.sh edge ARGS  run `emq-edge ARGS` in the chroot; EMQ_EDGE__* variables pass through,
#                                   EMQ_ARM64_PKI / EMQ_ARM64_DATA name the host folders it sees as
#                                   /opt/emq/pki (read-only) and /opt/emq/data
#   scripts/arm64-run.sh exec CMD   run CMD in the chroot (e.g. /opt/emq/venv/bin/python -c 'import cv2')
#   scripts/arm64-run.sh wheels     which aarch64 wheels (glibc <= 2.27) pip picks for CPython 3.10-3.13
#   scripts/arm64-run.sh clean      delete var/arm64/ (refuses while anything is mounted in it)
#
# Needs root (debootstrap, chroot, bind mounts). Installs debootstrap, qemu-user-static and
# binfmt-support with apt-get when missing. The first `prepare` takes long (debootstrap's second stage
# and pip run emulated); later runs reuse var/arm64/rootfs. Emulation speed says nothing about a Jetson.
#
# Settings (environment): EMQ_ARM64_DIR (var/arm64), EMQ_ARM64_SUITE (the host's codename),
# EMQ_ARM64_MIRROR (the host's Debian mirror), EMQ_ARM64_SOURCE (../shared/media/test.mp4),
# EMQ_ARM64_FRAMES (40), EMQ_ARM64_PORT (18883), EMQ_ARM64_CPU (QEMU's CPU model, cortex-a57),
# EMQ_ARM64_QEMU=explicit (start the agent through qemu-aarch64-static instead of binfmt_misc),
# EMQ_ARM64_WHEELS=glibc-2.27 (run on the dependency wheels a glibc-2.27 JetPack 4.6 device gets),
# EMQ_VENV (the host venv with the broker tools, .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=$(realpath -m "${EMQ_ARM64_DIR:-var/arm64}")
ROOTFS=$WORK/rootfs
TIMINGS=$WORK/timings.txt
GUEST=/opt/emq                      # everything of ours inside the chroot lives here
GUEST_VENV=$GUEST/venv
HOST_BIN=$(realpath -m "${EMQ_VENV:-.venv}")/bin
MOUNTS=()                           # mounted by this process, unmounted in reverse order on exit
PIDS=()                             # started by this process, stopped on exit
HOLDS_LOCK=0
# The emulated CPU: the TX2's Cortex-A57 (ARMv8.0: NEON, no fp16 arithmetic, no dot product, no SVE),
# so that OpenCV and LiteRT take the code paths they would take there. QEMU's default is "max".
CPU=${EMQ_ARM64_CPU:-cortex-a57}
GLIBC227=$GUEST/wheels-glibc2.27    # EMQ_ARM64_WHEELS=glibc-2.27: the dependency wheels a JetPack 4.6 device gets

log() { printf '\033[1m[arm64]\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- cleanup: runs on every exit, also after an error or Ctrl-C -----------------------------------

cleanup() {
  local status=$? index
  set +e  # a failing kill or wait (a stopped child's 143) must not cut the cleanup short
  stop_chroot_processes
  for ((index = ${#PIDS[@]} - 1; index >= 0; index--)); do
    kill "${PIDS[index]}" 2>/dev/null
    wait "${PIDS[index]}" 2>/dev/null
  done
  for ((index = ${#MOUNTS[@]} - 1; index >= 0; index--)); do
    umount "${MOUNTS[index]}" 2>/dev/null || umount -l "${MOUNTS[index]}" || log "could not unmount ${MOUNTS[index]}"
  done
  return "$status"
}
# Whatever still runs inside our chroot (an agent left by Ctrl-C or an error) was started by this
# script: found by its root directory, stopped by its pid, before the unmounts it would block.
chroot_processes() {
  local proc
  for proc in /proc/[0-9]*; do
    [[ "$(readlink "$proc/root" 2>/dev/null)" == "$ROOTFS" ]] && echo "${proc#/proc/}"
  done
  return 0
}

stop_chroot_processes() {
  local pid deadline
  ((HOLDS_LOCK)) && [[ -d $ROOTFS ]] || return 0  # only the holder of the lock uses the chroot
  for pid in $(chroot_processes); do
    log "stopping $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)) still running in the chroot"
    kill "$pid" 2>/dev/null
  done
  deadline=$((SECONDS + 15))
  while [[ -n "$(chroot_processes)" ]] && ((SECONDS < deadline)); do sleep 0.2; done  # polling: they hold the mounts
  for pid in $(chroot_processes); do kill -KILL "$pid" 2>/dev/null; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One user of the chroot at a time: two runs would mount over each other.
take_lock() {
  mkdir -p "$WORK"
  exec 9>"$WORK/lock"
  flock -w 3600 9 || die "another arm64-run holds $WORK/lock"
  HOLDS_LOCK=1
}

mounted_under() { findmnt -rn -o TARGET | awk -v root="$1" 'index($0, root "/") == 1 || $0 == root'; }

bind() {  # bind SOURCE TARGET [ro]
  local source=$1 target=$2
  [[ -d $source ]] && mkdir -p "$target"
  [[ -f $source && ! -e $target ]] && touch "$target"
  mount --bind "$source" "$target"
  MOUNTS+=("$target")
  mount --make-private "$target"  # nothing mounted below it reaches the host's tree
  [[ "${3:-}" == ro ]] && mount -o remount,bind,ro "$target"
  return 0
}

# QEMU 7.2 (Debian 12) passes the host's /proc/cpuinfo through: an x86 one. LiteRT >= 2.2 reads it
# (through the cpuinfo library) and segfaults in allocate_tensors; 2.1 does not. Real arm64 kernels
# list their cores there, so the chroot gets a file like theirs: one Cortex-A57 (the TX2's main
# cluster) per host CPU, so that the count agrees with /sys/devices/system/cpu.
write_cpuinfo() {
  local cpu
  for ((cpu = 0; cpu < $(nproc --all); cpu++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n' "$cpu"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd07\nCPU revision\t: 3\n\n'
  done >"$1"
}

mount_system() {
  local dir
  [[ -z "$(mounted_under "$ROOTFS")" ]] || die "something is already mounted under $ROOTFS (a killed run?): $(mounted_under "$ROOTFS" | tr '\n' ' ')"
  for dir in proc sys dev; do bind "/$dir" "$ROOTFS/$dir"; done
  write_cpuinfo "$WORK/cpuinfo" && bind "$WORK/cpuinfo" "$ROOTFS/proc/cpuinfo" ro
  # DNS and the host's trust store (a proxy's CA, if the host has one) so pip reaches the registry.
  cp -L /etc/resolv.conf /etc/hosts "$ROOTFS/etc/"
  mkdir -p "$ROOTFS/etc/emq" && cp -L "$(host_ca_bundle)" "$ROOTFS/etc/emq/host-ca.crt"
}

host_ca_bundle() {
  local bundle
  for bundle in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    [[ -n "$bundle" && -f "$bundle" ]] && { echo "$bundle"; return; }
  done
  die "no CA bundle found on the host (install ca-certificates)"
}

# A clean environment in the chroot: nothing of the host's PATH, pip config or PYTHONPATH.
guest_env() {
  local variable
  printf '%s\0' QEMU_CPU="$CPU" HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/emq/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 DEBIAN_FRONTEND=noninteractive
  [[ "${EMQ_ARM64_WHEELS:-}" == glibc-2.27 ]] && printf '%s\0' "PYTHONPATH=$GLIBC227"
  for variable in $(compgen -e | grep -E '^EMQ_(EDGE__|MODEL_STORE$)' || true); do
    printf '%s\0' "$variable=${!variable}"
  done
}

in_chroot() {
  local environment=()
  mapfile -d '' environment < <(guest_env)
  if [[ "${EMQ_ARM64_QEMU:-binfmt}" == explicit ]]; then
    # No binfmt_misc: the host's static QEMU runs the arm64 program. Children it execs would fail,
    # which is why only the agent (one process) is started this way.
    env -i "${environment[@]}" chroot "$ROOTFS" /usr/bin/qemu-aarch64-static "$@"
  else
    env -i "${environment[@]}" chroot "$ROOTFS" "$@"
  fi
}

record() {  # record STEP SECONDS
  mkdir -p "$WORK"
  { grep -v "^$1=" "$TIMINGS" 2>/dev/null || true; echo "$1=$2"; } >"$TIMINGS.new" && mv "$TIMINGS.new" "$TIMINGS"
  log "$1=$2"
}

now() { date +%s.%N; }
elapsed() { awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1f", end - start }'; }

# --- host prerequisites ---------------------------------------------------------------------------

install_host_packages() {
  local missing=()
  [[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, chroot and bind mounts need it)"
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [[ -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# binfmt_misc lets the kernel hand arm64 executables to QEMU, so that the chroot's own programs
# (dpkg, maintainer scripts, pip's build subprocesses) just run. Registered host-wide; left in place.
ensure_binfmt() {
  local node=/proc/sys/fs/binfmt_misc
  [[ -e $node/status ]] || mount -t binfmt_misc binfmt_misc "$node" 2>/dev/null || true
  [[ -e $node/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 2>/dev/null || true
  if [[ ! -e $node/qemu-aarch64 ]] || ! grep -qx enabled "$node/qemu-aarch64"; then
    if [[ "${EMQ_ARM64_QEMU:-binfmt}" == explicit ]]; then
      log "no binfmt_misc for qemu-aarch64: only an already prepared rootfs can be used (EMQ_ARM64_QEMU=explicit)"
      return 0
    fi
    die "cannot register qemu-aarch64 in binfmt_misc (a container without it?). debootstrap's second stage and pip spawn arm64 subprocesses and need it; only the agent itself can run without it (EMQ_ARM64_QEMU=explicit) in a rootfs prepared elsewhere."
  fi
}

# --- the arm64 userland ---------------------------------------------------------------------------

host_codename() { . /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"; }

# The Debian archive the host's apt uses (deb822 .sources or one-line lists), not security or third-party repositories.
host_mirror() {
  local uri
  uri=$({ awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources 2>/dev/null
          awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; } | grep -E '/debian/?$' | head -n1)
  echo "${uri:-http://deb.debian.org/debian}"
}

build_rootfs() {
  [[ -f $ROOTFS/.emq-rootfs-ok ]] && { log "reusing $ROOTFS ($(cat "$ROOTFS/.emq-rootfs-ok"))"; return; }
  local suite=${EMQ_ARM64_SUITE:-$(host_codename)} mirror=${EMQ_ARM64_MIRROR:-$(host_mirror)} start
  if [[ -d $ROOTFS ]]; then  # a half-built one from an interrupted run
    [[ -z "$(mounted_under "$ROOTFS")" ]] || die "refusing to delete $ROOTFS: something is mounted in it"
    log "removing the incomplete $ROOTFS"
    rm -rf --one-file-system "$ROOTFS"
  fi
  log "debootstrap --arch=arm64 --foreign $suite from $mirror"
  start=$(now)
  debootstrap --arch=arm64 --foreign --variant=minbase "$suite" "$ROOTFS" "$mirror" >"$WORK/debootstrap-1.log" 2>&1 \
    || die "debootstrap first stage failed; see $WORK/debootstrap-1.log"
  record debootstrap_first_stage_s "$(elapsed "$start")"
  cp /usr/bin/qemu-aarch64-static "$ROOTFS/usr/bin/"  # for binfmt entries without the F flag, and EMQ_ARM64_QEMU=explicit
  cp -L /etc/resolv.conf "$ROOTFS/etc/"
  log "debootstrap second stage (emulated)"
  chroot "$ROOTFS" /debootstrap/debootstrap --second-stage >"$WORK/debootstrap-2.log" 2>&1 \
    || die "debootstrap second stage failed; see $WORK/debootstrap-2.log and $ROOTFS/debootstrap/debootstrap.log"
  record debootstrap_s "$(elapsed "$start")"
  echo "Debian $suite arm64 from $mirror, $(date -u +%FT%TZ)" >"$ROOTFS/.emq-rootfs-ok"
}

install_python() {
  [[ -f $ROOTFS/.emq-python-ok ]] && return
  local start
  start=$(now)
  log "apt-get install python3 python3-venv (emulated)"
  in_chroot apt-get update -q >"$WORK/apt.log" 2>&1 \
    && in_chroot apt-get install -y -q --no-install-recommends python3 python3-venv >>"$WORK/apt.log" 2>&1 \
    || die "apt-get in the chroot failed; see $WORK/apt.log"
  record apt_python_s "$(elapsed "$start")"
  in_chroot python3 --version >"$ROOTFS/.emq-python-ok"
}

# What the wheel is built from, as git sees the working tree (tracked and new files, nothing ignored):
# a change to tests or docs does not reinstall.
wheel_sources() {
  git ls-files -z -co --exclude-standard -- pyproject.toml README.md common contract comms broker runtime edge cloud webui models \
    | grep -zv '^models/store$'
}

copy_source() {
  local target=$ROOTFS$GUEST/src
  rm -rf "$target" && mkdir -p "$target"
  wheel_sources | tar -c --null -T - | tar -x -C "$target"
}

source_hash() { wheel_sources | xargs -0 sha256sum | sha256sum | cut -c1-16; }

install_edge() {
  local deps_stamp code_stamp start
  deps_stamp=$ROOTFS$GUEST/.deps-$(sha256sum pyproject.toml | cut -c1-16)
  code_stamp=$ROOTFS$GUEST/.code-$(source_hash)
  [[ -f $code_stamp && -f $deps_stamp ]] && return
  copy_source
  [[ -x $ROOTFS$GUEST_VENV/bin/python ]] || in_chroot python3 -m venv "$GUEST_VENV"
  start=$(now)
  if [[ ! -f $deps_stamp ]]; then
    log "pip install '.[edge]' from the package registry (emulated)"
    in_chroot sh -c "cd $GUEST/src && $GUEST_VENV/bin/pip install --no-cache-dir '.[edge]'" >"$WORK/pip.log" 2>&1 \
      || die "pip install failed; see $WORK/pip.log"
    record pip_install_s "$(elapsed "$start")"
  else
    log "pip install --no-deps . (the code changed)"
    in_chroot sh -c "cd $GUEST/src && $GUEST_VENV/bin/pip install --no-deps --force-reinstall ." >"$WORK/pip-code.log" 2>&1 \
      || die "pip install failed; see $WORK/pip-code.log"
  fi
  [[ -f $deps_stamp ]] || record_versions  # after the full install: pip.log names the wheels
  rm -f "$ROOTFS$GUEST"/.deps-* "$ROOTFS$GUEST"/.code-* && touch "$deps_stamp" "$code_stamp"
}

record_versions() {
  { echo "# $(cat "$ROOTFS/.emq-rootfs-ok")"
    echo "# $(in_chroot uname -m) $(in_chroot "$GUEST_VENV/bin/python" --version)"
    in_chroot "$GUEST_VENV/bin/pip" list --format=freeze --exclude emotion-mqtt
    echo "# wheels:"; grep -oE '[A-Za-z0-9_.+-]+\.whl' "$WORK/pip.log" | sort -u || true
  } >"$WORK/versions.txt"
  log "installed versions in $WORK/versions.txt"
}

# Debian 12 has glibc 2.36, so pip picks e.g. OpenCV's manylinux_2_28 and cryptography's
# manylinux_2_34 wheels there; a JetPack 4.6 device (glibc 2.27) gets the manylinux2014 builds.
# Those go into their own folder, first on PYTHONPATH, so the agent runs on what a TX2 would install.
install_glibc227_wheels() {
  local stamp start platforms=() minor
  stamp=$ROOTFS$GLIBC227/.installed-$(sha256sum pyproject.toml | cut -c1-16)
  [[ -f $stamp ]] && return
  for minor in 17 18 19 20 21 22 23 24 25 26 27; do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
  edge_requirements >"$ROOTFS$GUEST/requirements-edge.txt"
  log "pip install the glibc <= 2.27 wheels of the edge's dependencies into $GLIBC227 (emulated)"
  start=$(now)
  rm -rf "${ROOTFS:?}$GLIBC227"
  in_chroot "$GUEST_VENV/bin/pip" install --no-cache-dir --only-binary=:all: "${platforms[@]}" --platform manylinux2014_aarch64 \
    --target "$GLIBC227" -r "$GUEST/requirements-edge.txt" >"$WORK/pip-glibc227.log" 2>&1 \
    || die "pip install of the glibc 2.27 wheels failed; see $WORK/pip-glibc227.log"
  record pip_install_glibc227_s "$(elapsed "$start")"
  grep -h '^Tag:' "$ROOTFS$GLIBC227"/*.dist-info/WHEEL | sort -u >"$WORK/wheels-glibc227-tags.txt"
  touch "$stamp"
}

prepare() {
  install_host_packages
  ensure_binfmt
  build_rootfs
  mount_system
  install_python
  install_edge
  if [[ "${EMQ_ARM64_WHEELS:-}" == glibc-2.27 ]]; then install_glibc227_wheels; fi
}

# --- static check: which wheels pip picks for aarch64 and glibc <= 2.27, per Python version -------

# The requirements of `emotion-mqtt[edge]`, read from pyproject.toml.
edge_requirements() {
  python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["edge"]))'
}

# pip's resolver with an explicit target platform. pip does not widen an explicit --platform to
# older manylinux tags, so every tag a glibc-2.27 aarch64 system accepts is listed. --isolated: only
# PyPI, none of this machine's pip configuration; a dry-run report names each wheel without downloading it.
check_wheels() {
  local python_version platforms=() minor report
  for minor in 17 18 19 20 21 22 23 24 25 26 27; do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
  platforms+=(--platform manylinux2014_aarch64)
  mkdir -p "$WORK/wheels"
  edge_requirements >"$WORK/wheels/requirements.txt"
  for python_version in ${EMQ_ARM64_PYTHONS:-3.10 3.11 3.12 3.13}; do
    report=$WORK/wheels/py$python_version.json
    if "$(host_tool pip)" install --isolated --cert "$(host_ca_bundle)" --index-url https://pypi.org/simple \
        --dry-run --ignore-installed --quiet --report "$report" --target "$WORK/wheels/unused" \
        --only-binary=:all: --python-version "$python_version" --implementation cp "${platforms[@]}" \
        -r "$WORK/wheels/requirements.txt" 2>"$WORK/wheels/py$python_version.err"; then
      echo "CPython $python_version: $(python3 -c 'import json, sys
print(" ".join(sorted(item["download_info"]["url"].rsplit("/", 1)[1] for item in json.load(open(sys.argv[1]))["install"])))' "$report")"
    else
      echo "CPython $python_version: does not resolve: $(grep -m1 -E 'ERROR' "$WORK/wheels/py$python_version.err")"
    fi
  done | tee "$WORK/wheels/summary.txt"
}

# --- the run --------------------------------------------------------------------------------------

# The first N frames of a clip, decoded by the arm64 OpenCV: a bounded input after which the agent exits.
# Sets FRAMES (not printed: mounts made in a $(…) subshell would escape the cleanup).
extract_frames() {
  local count=$1 source folder
  source=$(realpath "${EMQ_ARM64_SOURCE:-../shared/media/test.mp4}")
  folder=$WORK/frames-$(basename "$source" | tr -c 'A-Za-z0-9\n' _)-$count
  FRAMES=$folder
  if [[ ! -f $folder/.done ]]; then
    rm -rf "$folder" && mkdir -p "$folder"
    bind "$(dirname "$source")" "$ROOTFS$GUEST/media" ro
    bind "$folder" "$ROOTFS$GUEST/extract"
    in_chroot "$GUEST_VENV/bin/python" -c "
import sys, cv2
capture = cv2.VideoCapture(sys.argv[1])
for index in range(int(sys.argv[2])):
    ok, frame = capture.read()
    if not ok:
        break
    cv2.imwrite(f'$GUEST/extract/{index:05d}.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
" "$GUEST/media/$(basename "$source")" "$count"
    [[ -n "$(ls "$folder")" ]] || die "no frame could be read from $source"
    touch "$folder/.done"
  fi
}

model_store() { realpath "${EMQ_MODEL_STORE:-models/store}"; }

# emq-edge in the chroot. Started as `python emq-edge` so that EMQ_ARM64_QEMU=explicit works too.
run_edge() {
  local pki=${EMQ_ARM64_PKI:?set EMQ_ARM64_PKI to the host folder with ca.crt and clients/} data=${EMQ_ARM64_DATA:?set EMQ_ARM64_DATA}
  mkdir -p "$data"
  bind "$(realpath "$pki")" "$ROOTFS$GUEST/pki" ro
  bind "$(realpath "$data")" "$ROOTFS$GUEST/data"
  bind "$(model_store)" "$ROOTFS$GUEST/models" ro
  if [[ -n "${EMQ_ARM64_FRAMES_DIR:-}" ]]; then bind "$EMQ_ARM64_FRAMES_DIR" "$ROOTFS$GUEST/frames" ro; fi
  export EMQ_EDGE__PKI_DIR=$GUEST/pki EMQ_EDGE__DATA_DIR=$GUEST/data EMQ_MODEL_STORE=$GUEST/models
  log "emq-edge on $(in_chroot "$GUEST_VENV/bin/python" -c 'import platform, cv2
print(platform.machine(), "Python", platform.python_version(), "OpenCV from", cv2.__file__.rsplit("/cv2/", 1)[0])')"
  in_chroot "$GUEST_VENV/bin/python" "$GUEST_VENV/bin/emq-edge" "$@"
}

host_tool() {
  [[ -x $HOST_BIN/$1 ]] || die "$HOST_BIN/$1 missing: run scripts/setup.sh (or set EMQ_VENV)"
  echo "$HOST_BIN/$1"
}

start_broker() {
  local port=$1 deadline
  "$(host_tool emq-pki)" --dir "$WORK/pki" init --device arm64-cam >/dev/null
  EMQ_BROKER__PKI_DIR=$WORK/pki EMQ_BROKER__STATE_DIR=$WORK/broker EMQ_BROKER__BIND_ADDRESS=127.0.0.1 \
    EMQ_BROKER__TLS_PORT=$port EMQ_BROKER__PASSWORD_PORT=$((port + 1)) \
    "$(host_tool emq-broker)" run >"$WORK/broker.out" 2>&1 &
  PIDS+=($!)
  deadline=$((SECONDS + 20))
  until monitor_sub -t '$SYS/broker/version' -C 1 -W 2 >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "the broker did not come up; see $WORK/broker.out and $WORK/broker/mosquitto.log"
    kill -0 "${PIDS[-1]}" 2>/dev/null || die "the broker exited; see $WORK/broker.out"
    sleep 0.2  # polling: a refused connection returns at once
  done
}

monitor_sub() {
  mosquitto_sub -h localhost -p "$PORT" --cafile "$WORK/pki/ca.crt" \
    --cert "$WORK/pki/clients/monitor.crt" --key "$WORK/pki/clients/monitor.key" "$@"
}

# Results with their arrival time (%U); -d adds the SUBACK line we wait for before starting the agent.
start_subscriber() {
  local file=$1 deadline
  # Line-buffered: its debug lines would otherwise sit in a stdio buffer.
  stdbuf -oL mosquitto_sub -h localhost -p "$PORT" --cafile "$WORK/pki/ca.crt" --cert "$WORK/pki/clients/monitor.crt" \
    --key "$WORK/pki/clients/monitor.key" -d -t "emotion/devices/arm64-cam/result" -F '%U %p' >"$file" 2>&1 &
  PIDS+=($!)
  deadline=$((SECONDS + 20))
  until grep -q 'received SUBACK' "$file"; do
    ((SECONDS < deadline)) || die "no SUBACK for the result subscription: $(cat "$file")"
    sleep 0.1  # polling a file the subscriber writes
  done
}

report_run() {
  local received=$1 agent_start=$2 agent_log=$3 results
  results=$WORK/results.jsonl
  grep -E '^[0-9]+\.[0-9]+ \{' "$received" | cut -d' ' -f2- >"$results" || true
  [[ -s $results ]] || die "no result arrived; agent log: $agent_log"
  "$(host_tool emq-validate)" --summary <"$results" >"$WORK/validated.txt" || die "results break the contract: $(grep INVALID "$WORK/validated.txt" | head -3)"
  grep -E '^[0-9]+\.[0-9]+ \{' "$received" | awk -v start="$agent_start" '
    NR == 1 { first = $1 } { last = $1; count++ }
    END { printf "first_result_s=%.1f\nresults=%d\nresult_rate_fps=%.2f\n", first - start, count, (count > 1 ? (count - 1) / (last - first) : 0) }' \
    | while IFS='=' read -r key value; do record "$key" "$value"; done
  # The agent's own count: frames processed over its run time (model load and first frame included).
  python3 -c 'import json, re, sys
totals = json.loads(re.search(r"edge totals: (\{.*\})", open(sys.argv[1]).read()).group(1))
print("agent_fps=%.2f" % (totals["frames_processed"] / totals["duration_s"]))' "$agent_log" \
    | while IFS='=' read -r key value; do record "$key" "$value"; done
  log "$(grep -o 'edge totals: .*' "$agent_log" || echo 'no totals line')"
  log "$(wc -l <"$results") results valid against the contract; first: $(head -n1 "$WORK/validated.txt")"
}

run_all() {
  local frames received agent_log agent_start start
  PORT=${EMQ_ARM64_PORT:-18883}
  prepare
  extract_frames "${EMQ_ARM64_FRAMES:-40}"
  frames=$FRAMES
  log "$(find "$frames" -name '*.jpg' | wc -l) frames in $frames"
  start_broker "$PORT"
  received=$WORK/received.txt agent_log=$WORK/edge.log
  start_subscriber "$received"
  rm -rf "$WORK/edge-data"
  log "emq-edge (emulated aarch64) on $frames"
  agent_start=$(now)
  EMQ_ARM64_PKI=$WORK/pki EMQ_ARM64_DATA=$WORK/edge-data EMQ_ARM64_FRAMES_DIR=$frames \
    EMQ_EDGE__DEVICE_ID=arm64-cam EMQ_EDGE__MQTT__HOST=localhost EMQ_EDGE__MQTT__PORT=$PORT \
    EMQ_EDGE__OUTBOX__KEEP_UNTIL=acknowledged EMQ_EDGE__PUBLISH__STATS_INTERVAL_S=2 \
    run_edge --source "$GUEST/frames" >"$agent_log" 2>&1 || die "emq-edge failed; see $agent_log"
  record agent_run_s "$(elapsed "$agent_start")"
  report_run "$received" "$agent_start" "$agent_log"
  log "timings in $TIMINGS, versions in $WORK/versions.txt. Emulation speed says nothing about a Jetson."
}

main() {
  case "${1:-all}" in
    all) take_lock; run_all ;;
    prepare) take_lock; prepare ;;
    frames) take_lock; install_host_packages; ensure_binfmt; [[ -f $ROOTFS$GUEST_VENV/bin/emq-edge ]] || die "run prepare first"
            mount_system; extract_frames "${2:?number of frames}"; echo "$FRAMES" ;;
    edge) shift; take_lock; [[ -f $ROOTFS$GUEST_VENV/bin/emq-edge ]] || die "run prepare first"
          ensure_binfmt; mount_system; run_edge "$@" ;;
    exec) shift; take_lock; ensure_binfmt; mount_system; in_chroot "$@" ;;
    wheels) check_wheels ;;
    clean) take_lock; [[ -z "$(mounted_under "$WORK")" ]] || die "something is mounted under $WORK"; rm -rf --one-file-system "$WORK" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
  esac
}

# One line, read whole before it runs: editing this file during a long run cannot change the run.
main "$@"; exit

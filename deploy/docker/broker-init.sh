#!/bin/sh
# One-shot setup for docker compose (service `init`, tools image, run as root):
# create or complete the PKI, render the broker config and ACL into the shared
# volumes, then give each file to the user that reads it. Safe to re-run: the
# PKI keeps existing keys and valid certificates, rendering is deterministic.
#
#   EMQ_PKI_DIR              PKI volume, e.g. /pki (same path in every container)
#   EMQ_BROKER__STATE_DIR    broker volume, e.g. /broker (conf, ACL, persistence)
#   EMQ_BROKER__*            any other broker setting (see broker/config.py)
#   EMQ_INIT_HOSTS           extra names for the broker certificate, space separated
#   EMQ_INIT_DEVICES         device identities to create, space separated
#   EMQ_INIT_BROKER_UID      uid of the Mosquitto process (1883 in eclipse-mosquitto)
#   EMQ_INIT_SERVICE_UID     uid of our Python services (10001 in deploy/Dockerfile)
#   EMQ_INIT_CHOWN           0 to leave ownership alone (set automatically when not root)
set -eu

pki_dir=${EMQ_PKI_DIR:?EMQ_PKI_DIR must name the PKI folder}
state_dir=${EMQ_BROKER__STATE_DIR:?EMQ_BROKER__STATE_DIR must name the broker state folder}
broker_uid=${EMQ_INIT_BROKER_UID:-1883}
service_uid=${EMQ_INIT_SERVICE_UID:-10001}
# emq-broker reads its PKI location from its own settings; keep both names in step.
export EMQ_BROKER__PKI_DIR="${EMQ_BROKER__PKI_DIR:-$pki_dir}"

log() { printf '[init] %s\n' "$*"; }

create_pki() {
    set --
    for host in ${EMQ_INIT_HOSTS:-}; do set -- "$@" --host "$host"; done
    for device in ${EMQ_INIT_DEVICES:-}; do set -- "$@" --device "$device"; done
    emq-pki --dir "$pki_dir" init "$@" | sed 's/^/[init] pki: /'
}

render_broker_config() {
    log "broker config: $(emq-broker render)"
}

# Root owns the PKI; each private key belongs to whoever must read it. The CA
# key stays root-only, so no running service can issue certificates.
assign_ownership() {
    chown -R 0:0 "$pki_dir"
    chmod 600 "$pki_dir/ca.key"
    for key in "$pki_dir"/clients/*.key; do
        [ -e "$key" ] || continue
        chown "$service_uid:$service_uid" "$key"
        chmod 600 "$key"
    done
    chown "$broker_uid:$broker_uid" "$pki_dir/server.key"
    [ -e "$pki_dir/passwd" ] && chown "$broker_uid:$broker_uid" "$pki_dir/passwd"
    # The broker's healthcheck subscribes as `monitor`: let the broker's group read that key too.
    if [ -e "$pki_dir/clients/monitor.key" ]; then
        chown "$service_uid:$broker_uid" "$pki_dir/clients/monitor.key"
        chmod 640 "$pki_dir/clients/monitor.key"
    fi
    chown -R "$broker_uid:$broker_uid" "$state_dir"
    log "ownership: keys for uid $service_uid, broker files for uid $broker_uid, CA key root only"
}

should_assign_ownership() {
    [ "$(id -u)" = 0 ] && [ "${EMQ_INIT_CHOWN:-1}" != 0 ]
}

create_pki
render_broker_config
if should_assign_ownership; then
    assign_ownership
else
    log "not root (or EMQ_INIT_CHOWN=0): file ownership left as it is"
fi
log "done"

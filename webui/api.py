"""The JSON API and the live stream, behind the same login and roles as the pages.

    GET  /api/me                              who am I
    GET  /api/devices                         live state of every device (+ the store's device list)
    GET  /api/stream                          Server-Sent Events: hello (device_ids, counters), frame, result, status, stats, reply, removed, broker, tick
    GET  /api/results?device&emotion&since&until&range&tz&limit&offset
    GET  /api/results/<id>                    one result with its faces
    GET  /api/emotion-share?device&since&until&range&tz&bucket
    GET  /api/labels/queue?limit&device       (labeller) faces to label, least confident first
    GET  /api/labels/progress
    POST /api/labels {face_id, label}         (labeller)
    POST /api/devices/<id>/commands {command, args}   (admin)
    GET  /api/commands/<id>                   (admin) a sent command and its reply, if any
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, abort, g, jsonify, request

from contract.emotions import EMOTIONS
from webui.auth import requires
from webui.commands import CommandNotSent, CommandRejected
from webui.filters import (
    MAX_ROW_ID,
    FilterError,
    parse_device,
    parse_int,
    parse_page,
    parse_result_filter,
)
from webui.live import StreamLimitReached
from webui.present import device_dict, face_dict, result_dict
from webui.queries import choose_bucket
from webui.services import current_services
from webui.stream import hello_event, live_events

log = logging.getLogger(__name__)
blueprint = Blueprint("api", __name__, url_prefix="/api")

MAX_CHART_DEVICES = 12
MAX_CHART_BUCKETS = 2000
MAX_QUEUE = 200


@blueprint.errorhandler(FilterError)
def bad_filter(error: FilterError):
    return jsonify(error=str(error)), 400


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, description="send a JSON object (Content-Type: application/json)")
    return body


# -- who, what ------------------------------------------------------------------------------------
@blueprint.route("/me")
@requires("viewer")
def me():
    return jsonify(user=g.user.name, role=g.user.role)


@blueprint.route("/devices")
@requires("viewer")
def devices():
    services = current_services()
    return jsonify(
        devices=services.hub.devices(),
        stored=[device_dict(row) for row in services.store.devices()],
        hub=services.hub.counters(),
    )


@blueprint.route("/stream")
@requires("viewer")
def stream():
    """The live feed of one browser tab (see :mod:`webui.stream`)."""
    services = current_services()
    try:
        mailbox = services.hub.open_stream()
    except StreamLimitReached as error:
        return jsonify(error=str(error)), 503, {"Retry-After": "5"}
    settings = {
        "user": g.user.name, "role": g.user.role, "stale_after_s": services.config.live.stale_after_s,
        "device_ids": services.hub.device_ids(),  # after a reconnect the page drops tiles of devices the hub let go
    }
    events = live_events(
        services.hub,
        mailbox,
        hello=hello_event(services.hub, settings),
        keepalive_s=services.config.live.keepalive_s,
        max_age_s=services.config.live.stream_max_age_s,
    )
    response = Response(events, mimetype="text/event-stream", headers={"X-Accel-Buffering": "no"})
    # Frees the slot even if the server closes the response before the generator ever ran.
    response.call_on_close(lambda: services.hub.close_stream(mailbox))
    return response


# -- history ----------------------------------------------------------------------------------------
@blueprint.route("/results")
@requires("viewer")
def results():
    store = current_services().store
    result_filter = parse_result_filter(request.args)
    page = parse_page(request.args)
    arguments = result_filter.as_store_arguments()
    rows = store.results(**arguments, limit=page.limit, offset=page.offset)
    return jsonify(total=store.count_results(**arguments), limit=page.limit, offset=page.offset, items=[result_dict(row) for row in rows])


@blueprint.route("/results/<rowid:result_id>")
@requires("viewer")
def result(result_id: int):
    store = current_services().store
    found = store.result(result_id)
    if found is None:
        abort(404, description=f"no result {result_id}")
    row, faces = found
    has_frame = store.frame_for_result(row.msg_id) is not None
    body = result_dict(row)
    if not has_frame:
        body["frame_url"] = None
    return jsonify(result=body, faces=[face_dict(face) for face in faces])


@blueprint.route("/emotion-share")
@requires("viewer")
def emotion_share():
    """Per device, the share of each emotion among faces per time bucket (percent) and the face counts."""
    store = current_services().store
    result_filter = parse_result_filter(request.args)
    bounds = store.face_time_range(result_filter.device_id, result_filter.since, result_filter.until)
    if bounds is None:
        return jsonify(bucket_s=None, since=None, until=None, devices={})
    since = result_filter.since if result_filter.since is not None else bounds[0]
    until = result_filter.until if result_filter.until is not None else bounds[1] + 1
    bucket = parse_int(request.args, "bucket", choose_bucket(until - since), 1, 7 * 24 * 3600)
    if (until - since) / bucket > MAX_CHART_BUCKETS:
        raise FilterError(f"bucket: too small for this range (more than {MAX_CHART_BUCKETS} points)")
    device_ids = [result_filter.device_id] if result_filter.device_id else store.devices_with_faces(since, until)
    series = {device: share_series(store.emotion_share(device, since, until, bucket)) for device in device_ids[:MAX_CHART_DEVICES]}
    return jsonify(bucket_s=bucket, since=since, until=until, devices=series, truncated=len(device_ids) > MAX_CHART_DEVICES)


def share_series(rows: list[tuple[float, str, int]]) -> dict[str, Any]:
    """(bucket, label, count) rows → bucket times, per-emotion counts and percentages."""
    buckets = sorted({bucket for bucket, _, _ in rows})
    position = {bucket: index for index, bucket in enumerate(buckets)}
    counts = {name: [0] * len(buckets) for name in EMOTIONS}
    for bucket, label, count in rows:
        if label in counts:
            counts[label][position[bucket]] += count
    totals = [sum(counts[name][index] for name in EMOTIONS) for index in range(len(buckets))]
    percent = {name: [round(100.0 * value / total, 2) if total else 0.0 for value, total in zip(values, totals)] for name, values in counts.items()}
    return {"t": [bucket * 1000 for bucket in buckets], "counts": counts, "percent": percent, "totals": totals}


# -- labelling ---------------------------------------------------------------------------------------
def progress() -> dict[str, Any]:
    labelled, with_crop = current_services().store.label_progress()
    return {"labelled": labelled, "with_crop": with_crop}


@blueprint.route("/labels/queue")
@requires("labeller")
def label_queue():
    limit = parse_int(request.args, "limit", 20, 1, MAX_QUEUE)
    faces = current_services().store.label_queue(limit=limit, device_id=parse_device(request.args))
    return jsonify(items=[face_dict(face) for face in faces], progress=progress())


@blueprint.route("/labels/progress")
@requires("viewer")
def label_progress():
    return jsonify(progress())


@blueprint.route("/labels", methods=["POST"])
@requires("labeller")
def add_label():
    body = json_body()
    face_id, label = body.get("face_id"), body.get("label")
    if isinstance(face_id, bool) or not isinstance(face_id, int) or not isinstance(label, str):
        abort(400, description="face_id (integer) and label (emotion name) are required")
    if not 0 <= face_id <= MAX_ROW_ID:
        abort(404, description=f"no face {face_id}")
    try:
        current_services().store.add_label(face_id, label, g.user.name)
    except ValueError as error:
        abort(400, description=str(error))
    except LookupError as error:
        abort(404, description=str(error))
    log.info("%s labelled face %d as %s", g.user.name, face_id, label)
    return jsonify(face_id=face_id, label=label, labelled_by=g.user.name, progress=progress()), 201


# -- device control --------------------------------------------------------------------------------------
@blueprint.route("/devices/<device_id>/commands", methods=["POST"])
@requires("admin")
def send_command(device_id: str):
    body = json_body()
    name, args = body.get("command"), body.get("args") or {}
    if not isinstance(name, str) or not isinstance(args, dict):
        abort(400, description="command (string) and optional args (object) are required")
    try:
        record = current_services().commands.send(device_id, name, args, g.user.name)
    except CommandRejected as error:
        abort(400, description=f"invalid command: {error}")
    except CommandNotSent as error:
        abort(503, description=str(error))
    log.info("%s sent %s %s to %s (%s)", g.user.name, record.command, record.args, device_id, record.id)
    return jsonify(record.as_dict()), 202


@blueprint.route("/commands/<command_id>")
@requires("admin")
def command_status(command_id: str):
    record = current_services().commands.log.get(command_id)
    if record is None:
        abort(404, description="unknown command (only recent commands are kept)")
    return jsonify(record.as_dict())

"""Media behind the login: stored frames (files or database rows, by result id only), face crops (in the store), plotly.js."""

from __future__ import annotations

from flask import Blueprint, Response, abort, send_file

from webui.auth import requires
from webui.media import JPEG_START, PNG_START, MediaUnavailable, image_type, resolve_stored_path
from webui.services import current_services

blueprint = Blueprint("assets", __name__)

MEDIA_MAX_AGE_S = 3600  # stored files never change; private to the browser (no-store is not needed)
VENDOR_MAX_AGE_S = 7 * 24 * 3600


def send_stored(relative_path: str | None):
    services = current_services()
    try:
        path = resolve_stored_path(services.config.store.data_dir, relative_path)
        mimetype = image_type(path)
    except MediaUnavailable as reason:
        abort(404, description=str(reason))
    response = send_file(path, mimetype=mimetype, max_age=MEDIA_MAX_AGE_S, conditional=True)
    response.headers["Cache-Control"] = f"private, max-age={MEDIA_MAX_AGE_S}"
    return response


@blueprint.route("/media/results/<rowid:result_id>/frame")
@requires("viewer")
def result_frame(result_id: int):
    store = current_services().store
    found = store.result(result_id)
    if found is None:
        abort(404, description=f"no result {result_id}")
    frame = store.frame_for_result(found[0].msg_id)
    if frame is not None and frame.in_database:
        return send_frame_bytes(store.frame_jpeg(frame.id))
    return send_stored(frame.path if frame else None)


def send_frame_bytes(jpeg: bytes | None):
    """A frame the ingest kept in the database (frames.backend = "database"): no shared disk needed."""
    if jpeg is None or not jpeg.startswith(JPEG_START):
        abort(404, description="frame no longer stored (retention may have removed it)")
    response = Response(jpeg, mimetype="image/jpeg")
    response.headers["Cache-Control"] = f"private, max-age={MEDIA_MAX_AGE_S}"
    return response


@blueprint.route("/media/faces/<rowid:face_id>/crop")
@requires("viewer")
def face_crop(face_id: int):
    """The 64x64 grey PNG the model saw (kept in the store itself, not as a file)."""
    crop = current_services().store.crop_png(face_id)
    if crop is None or not crop.startswith(PNG_START):
        abort(404, description=f"no crop stored for face {face_id}")
    response = Response(crop, mimetype="image/png")
    response.headers["Cache-Control"] = f"private, max-age={MEDIA_MAX_AGE_S}"
    return response


@blueprint.route("/vendor/plotly.min.js")
@requires("viewer")
def plotly_js():
    response = send_file(current_services().plotly_js, mimetype="text/javascript", max_age=VENDOR_MAX_AGE_S, conditional=True)
    response.headers["Cache-Control"] = f"private, max-age={VENDOR_MAX_AGE_S}"
    return response

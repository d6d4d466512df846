"""The HTML pages: live tiles, history, one result, labelling. Data arrives through :mod:`webui.api`."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

from flask import Blueprint, abort, g, render_template, request, url_for

from webui.auth import requires
from webui.filters import RANGES_S, FilterError, parse_page, parse_result_filter
from webui.present import face_dict, known_device_ids, result_dict
from webui.queries import ResultFilter
from webui.services import current_services

blueprint = Blueprint("pages", __name__)

HISTORY_ARGUMENTS = ("device", "emotion", "range", "since", "until", "tz", "page", "limit")
MAX_HISTORY_QUERY_CHARS = 1000


@blueprint.route("/")
@requires("viewer")
def live():
    """One tile per device, filled and updated by the live stream."""
    config = current_services().config
    return render_template(
        "live.html",
        can_command=g.user.can("admin"),
        stale_after_s=config.live.stale_after_s,
        max_devices=config.live.max_devices,
    )


@blueprint.route("/history")
@requires("viewer")
def history():
    """Stored results filtered by device, emotion and time range, newest first, paginated."""
    services = current_services()
    error = None
    try:
        result_filter = parse_result_filter(request.args)
        page = parse_page(request.args)
    except FilterError as problem:
        error, result_filter, page = str(problem), ResultFilter(), parse_page({})
    arguments = result_filter.as_store_arguments()
    total = services.store.count_results(**arguments)
    rows = services.store.results(**arguments, limit=page.limit, offset=page.offset)
    results = [result_dict(row) for row in rows]
    filters = history_query(request.args)
    for result in results:
        # The result page links back to this very list (filters, page) without trusting the Referer.
        result["url"] = url_for("pages.result_detail", result_id=result["id"], history=filters or None)
    return render_template(
        "history.html",
        error=error,
        results=results,
        total=total,
        page=page,
        last_page=max((total + page.limit - 1) // page.limit, 1),
        devices=known_device_ids(services.store, services.hub),
        ranges=list(RANGES_S),
        args=request.args,
    ), (400 if error else 200)


@blueprint.route("/results/<rowid:result_id>")
@requires("viewer")
def result_detail(result_id: int):
    """One stored result: its frame with the faces outlined, and every face's probabilities."""
    store = current_services().store
    found = store.result(result_id)
    if found is None:
        abort(404, description=f"no result {result_id}")
    row, faces = found
    frame = store.frame_for_result(row.msg_id)
    size = store.result_frame_size(result_id) or ((frame.width, frame.height) if frame else (1, 1))
    return render_template(
        "result.html",
        result=result_dict(row),
        faces=[face_dict(face) for face in faces],
        has_frame=frame is not None,
        frame_size=size,
        back=url_for("pages.history") + back_query(request.args.get("history", "")),
    )


def history_query(args: Mapping[str, str]) -> str:
    """The history page's own filters and page as a query string: unknown arguments are dropped."""
    return urlencode([(name, args[name]) for name in HISTORY_ARGUMENTS if args.get(name)])


def back_query(history: str) -> str:
    """``?…`` for the "← History" link, rebuilt from the known filter names only, so the link always
    stays on our own history page (a forged ``history`` argument cannot point anywhere else)."""
    query = history_query(dict(parse_qsl(history[:MAX_HISTORY_QUERY_CHARS])))
    return f"?{query}" if query else ""


@blueprint.route("/labelling")
@requires("labeller")
def labelling():
    """The crop queue, least confident first, labelled from the keyboard."""
    services = current_services()
    labelled, with_crop = services.store.label_progress()
    return render_template(
        "labelling.html",
        labelled=labelled,
        with_crop=with_crop,
        devices=known_device_ids(services.store, services.hub),
    )

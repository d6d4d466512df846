"""Out-of-range ids, numbers and dates get a clean 4xx (never a 500), on every route that takes them.

Flask's test client against the real app and a real SQLite store (no server or broker needed).
"""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta, timezone

import pytest
from werkzeug.routing import IntegerConverter

from tests.webui_helpers import csrf_of, form_log_in, full_store, seed_history
from tests.webui_helpers import webui_app  # noqa: F401 (shared fixture)

HUGE_IDS = [str(2**63), str(2**64), str(10**30), "9" * 5000, "00000000000000000000001"]
ID_ROUTES = ["/results/{}", "/api/results/{}", "/media/results/{}/frame", "/media/faces/{}/crop"]

# The routes that read times or numbers from the query string, and what each must refuse.
FILTER_ROUTES = ["/history", "/api/results", "/api/emotion-share"]
BAD_FILTERS = [
    "since=9999-12-31T23:59:59&tz=960",      # past datetime's year 9999 once the zone is applied
    "until=0001-01-01T00:00:00&tz=-960",     # before year 1
    "since=0001-01-01T00:00:00Z",            # a real date, but before 1970
    "since=10000-01-01T00:00:00",
    "since=nan", "until=inf", "since=-inf", "since=1e400", "since=-1", "since=" + "9" * 400,
    "until=99999999999999999999",
    "tz=99999999999999999999", "tz=961", "tz=1.5",
    "limit=99999999999999999999999", "limit=0", "offset=-1", "offset=" + "9" * 5000, "page=" + str(10**30),
]
EXTRA_BAD_FILTERS = {
    "/api/emotion-share": ["bucket=" + str(2**64), "bucket=0", "bucket=-5"],
    "/api/labels/queue": ["limit=" + str(2**64), "limit=-1", "device=" + "x" * 300],
}
# Query arguments each route actually reads; the others are ignored, which is fine.
READS = {
    "/history": ("since", "until", "tz", "limit", "offset", "page"),
    "/api/results": ("since", "until", "tz", "limit", "offset", "page"),
    "/api/emotion-share": ("since", "until", "tz", "bucket"),
    "/api/labels/queue": ("limit", "device"),
}
QUERY_PARSERS = ("parse_result_filter", "parse_page", "parse_int", "parse_device")


def bad_queries() -> list[tuple[str, str]]:
    cases = []
    for path, reads in READS.items():
        for query in BAD_FILTERS + EXTRA_BAD_FILTERS.get(path, []):
            names = {part.split("=", 1)[0] for part in query.split("&")}
            if names <= set(reads):
                cases.append((path, query))
    return cases


@pytest.fixture
def admin(webui_app):
    """A logged-in admin (every role's routes) on a store with a few results (so the chart code runs too)."""
    services = webui_app.extensions["emq"]
    seed_history(full_store(services), services.config.store.data_dir, 4, start=datetime.now(timezone.utc) - timedelta(hours=1))
    client = webui_app.test_client()
    assert form_log_in(client, "admin").status_code == 302
    return client


@pytest.mark.parametrize("route", ID_ROUTES)
@pytest.mark.parametrize("result_id", HUGE_IDS)
def test_an_id_beyond_64_bits_is_not_found(admin, route, result_id):
    response = admin.get(route.format(result_id))
    assert response.status_code == 404, response.get_data(as_text=True)[:300]


@pytest.mark.parametrize("route", ID_ROUTES)
def test_the_largest_64_bit_id_is_simply_not_there(admin, route):
    assert admin.get(route.format(2**63 - 1)).status_code == 404


@pytest.mark.parametrize(("path", "query"), bad_queries())
def test_an_out_of_range_time_or_number_is_a_400(admin, path, query):
    response = admin.get(f"{path}?{query}")
    assert response.status_code == 400, f"{path}?{query[:60]} answered {response.status_code}"
    if path.startswith("/api/"):
        assert response.get_json()["error"]
    else:
        assert 'role="alert"' in response.get_data(as_text=True), "the page says what was wrong"


@pytest.mark.parametrize("face_id", [2**63, 2**64, -1, 10**400])
def test_a_label_for_a_face_id_beyond_64_bits_is_not_found(admin, face_id):
    response = admin.post("/api/labels", json={"face_id": face_id, "label": "happy"}, headers={"X-CSRF-Token": csrf_of(admin)})
    assert response.status_code == 404, response.get_data(as_text=True)[:300]


def test_the_good_inputs_still_work(admin):
    assert admin.get("/history?since=2026-01-01T00:00:00&tz=-60").status_code == 200
    assert admin.get("/api/results?since=0&until=253402300799").get_json()["total"] == 4
    assert admin.get("/api/results/1").status_code == 200
    assert admin.get("/api/emotion-share?range=24h").status_code == 200


def test_every_route_with_an_id_or_query_numbers_is_covered(webui_app):
    """A new route taking an id or parsing query arguments must be added to the lists above."""
    with_ids = set()
    for rule in webui_app.url_map.iter_rules():
        if any(isinstance(converter, IntegerConverter) for converter in rule._converters.values()):
            with_ids.add(rule.rule)
    assert with_ids == {route.format(f"<rowid:{name}>") for route, name in zip(ID_ROUTES, ("result_id", "result_id", "result_id", "face_id"))}
    parsing = set()
    for rule in webui_app.url_map.iter_rules():
        source = inspect.getsource(webui_app.view_functions[rule.endpoint])
        if any(parser in source for parser in QUERY_PARSERS):
            parsing.add(rule.rule)
    assert parsing == set(READS), "a route reads query numbers/times but is not tested here"
    assert set(FILTER_ROUTES) <= set(READS)

"""The Flask application: one factory, one login guard in front of every route, hardened responses.

Every route needs a logged-in user except the few in
:data:`PUBLIC_ENDPOINTS`. The guard runs before any view, so a new route is
protected by default: pages redirect to the login, ``/api/…`` (including the
live stream) answers 401 JSON. Roles are checked per view with
:func:`webui.auth.requires`. Every state-changing request must carry the
session's CSRF token (:mod:`webui.security`).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from pathlib import Path

from flask import Flask, current_app, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from contract.emotions import EMOTIONS
from webui import api, assets, auth, pages
from webui.config import ROLES, WebUIConfig
from webui.filters import MAX_ROW_ID
from webui.metrics import WebMetrics
from webui.security import add_security_headers, content_security_policy, csrf_failure, csrf_token
from webui.services import Services, build_services, current_services
from webui.vendor import plotly_style_hashes, plotly_version

log = logging.getLogger(__name__)

# Reachable without a session: the login form, its CSS/JS, and a health check for load balancers.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "static", "health"})
MAX_REQUEST_BYTES = 64 * 1024
STATIC_MAX_AGE_S = 365 * 24 * 3600  # asset URLs carry a content hash


def create_app(config: WebUIConfig, *, services: Services | None = None) -> Flask:
    """Build the dashboard for ``config``; ``services`` lets tests pass their own (e.g. without a broker)."""
    services = services or build_services(config)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=services.secret_key,
        SESSION_COOKIE_NAME="emq_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.auth.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=config.auth.session_lifetime_s),
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        SEND_FILE_MAX_AGE_DEFAULT=STATIC_MAX_AGE_S,
        JSON_SORT_KEYS=False,
    )
    app.extensions["emq"] = services
    app.url_map.converters["rowid"] = RowIdConverter  # before the blueprints: their rules use it
    for blueprint in (auth.blueprint, pages.blueprint, api.blueprint, assets.blueprint):
        app.register_blueprint(blueprint)
    app.add_url_rule("/healthz", "health", health)
    metrics = WebMetrics(services.hub)
    metrics.install(app)  # first, so the timer also covers the login guard
    app.extensions["emq_metrics"] = metrics
    app.before_request(guard)
    app.after_request(harden)
    app.register_error_handler(HTTPException, render_error)
    app.context_processor(template_globals)
    app.jinja_env.globals["asset"] = AssetUrls(Path(app.static_folder))
    app.jinja_env.globals["plotly_version"] = plotly_version(services.plotly_js)
    app.config["EMQ_CSP"] = content_security_policy(plotly_style_hashes(services.plotly_js))
    return app


class RowIdConverter(IntegerConverter):
    """A database id in a URL: 0 … 2**63 - 1 (signed 64-bit, as SQLite and PostgreSQL store them).

    Anything longer or larger is no such page (404), instead of an overflow
    inside the database driver (500).
    """

    regex = r"[0-9]{1,19}"

    def __init__(self, url_map) -> None:
        super().__init__(url_map, max=MAX_ROW_ID)


def wants_json() -> bool:
    return request.path.startswith("/api/")


def guard():
    """Log-in check for every non-public endpoint, then the CSRF check for every unsafe method."""
    services = current_services()
    g.user = auth.session_user(services.users, services.sessions)
    if request.endpoint not in PUBLIC_ENDPOINTS and g.user is None:
        if wants_json():
            return jsonify(error="login required"), 401
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    failure = csrf_failure()
    if failure:
        return error_response(403, failure)
    return None


def harden(response):
    https = request.is_secure or current_services().config.auth.secure_cookies
    return add_security_headers(response, policy=current_app.config["EMQ_CSP"], https=https)


def health():
    """Minimal liveness for load balancers: no data, only whether the broker link is up."""
    connected = current_services().hub.broker_connected
    return jsonify(ok=connected), (200 if connected else 503)


def error_response(status: int, message: str):
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status


def render_error(error: HTTPException):
    return error_response(error.code or 500, error.description or error.name)


def template_globals() -> dict:
    user = getattr(g, "user", None)
    return {"current_user": user, "csrf_token": csrf_token, "emotions": EMOTIONS, "roles": ROLES}


class AssetUrls:
    """``asset('css/app.css')`` → ``/static/css/app.css?v=<hash>``: cacheable for a year, fresh after a change."""

    def __init__(self, static_folder: Path) -> None:
        self.static_folder = static_folder
        self._versions: dict[str, str] = {}

    def __call__(self, filename: str) -> str:
        version = self._versions.get(filename)
        if version is None:
            content = (self.static_folder / filename).read_bytes()
            version = self._versions[filename] = hashlib.sha256(content).hexdigest()[:12]
        return url_for("static", filename=filename, v=version)

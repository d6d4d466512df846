"""Log in, log out, who is asking, and what their role lets them do.

The cookie (Flask's signed session) holds only a random session id and the
CSRF token; which user a session belongs to, and whether it is still open,
is kept on the server (:mod:`webui.sessions`), so logging out ends the
session for every copy of the cookie. The role is looked up on every
request, so changing a role, a password or removing a user takes effect at once.
"""

from __future__ import annotations

import logging
import math
from functools import wraps

from flask import (
    Blueprint,
    abort,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from webui.config import Role
from webui.security import safe_next
from webui.services import current_services
from webui.sessions import SessionStore
from webui.users import User, UserDirectory, session_tag

log = logging.getLogger(__name__)
blueprint = Blueprint("auth", __name__)

MAX_CREDENTIAL_CHARS = 256
SESSION_ID_KEY = "sid"  # the only login data in the cookie; the rest is in webui.sessions


def session_user(users: UserDirectory, sessions: SessionStore) -> User | None:
    """The logged-in user, or None (no session, logged out, expired, user removed, or password changed since)."""
    session_id = session.get(SESSION_ID_KEY)
    if not isinstance(session_id, str) or not session_id:
        return None
    opened = sessions.get(session_id)
    if opened is None:
        return None
    user = users.get(opened.user_name)
    if user is None or opened.tag != session_tag(user):
        sessions.end(session_id)  # it can never become valid again
        return None
    return user


def requires(role: Role):
    """Allow the view only to users whose role is at least ``role`` (viewer < labeller < admin)."""

    def decorator(view):
        @wraps(view)
        def checked(*args, **kwargs):
            user: User | None = g.get("user")
            if user is None or not user.can(role):
                abort(403, description=f"this needs the {role} role")
            return view(*args, **kwargs)

        checked.required_role = role
        return checked

    return decorator


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    """The login form; on success a fresh session (no fixation) and back to where the user was going."""
    target = safe_next(request.values.get("next"))
    if g.get("user") is not None and request.method == "GET":
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target)
    name = request.form.get("username", "")[:MAX_CREDENTIAL_CHARS].strip()
    password = request.form.get("password", "")[:MAX_CREDENTIAL_CHARS]
    services = current_services()
    address, account = request.remote_addr or "unknown", name.lower()
    wait = services.throttle.retry_after(address, account)
    if wait is not None:
        log.warning("login throttled for %r from %s", name, request.remote_addr)
        message = f"Too many failed attempts. Try again in {math.ceil(wait)} s."
        response = render_template("login.html", next=target, error=message, username=name)
        return response, 429, {"Retry-After": str(math.ceil(wait))}
    user = services.users.authenticate(name, password) if name and password else None
    if user is None:
        services.throttle.record_failure(address, account)
        log.info("failed login for %r from %s", name, request.remote_addr)
        return render_template("login.html", next=target, error="Wrong user name or password.", username=name), 401
    services.throttle.record_success(address, account)
    start_session(user, services.sessions)
    log.info("%s logged in from %s", user.name, request.remote_addr)
    return redirect(target)


def start_session(user: User, sessions: SessionStore) -> None:
    """A new server-side session; an earlier one in this browser ends (no fixation)."""
    end_session(sessions)
    session.permanent = True
    session[SESSION_ID_KEY] = sessions.open(user.name, session_tag(user))
    # session.clear() also dropped the CSRF token: a new one after login


def end_session(sessions: SessionStore) -> None:
    session_id = session.get(SESSION_ID_KEY)
    if isinstance(session_id, str) and session_id:
        sessions.end(session_id)
    session.clear()


@blueprint.route("/logout", methods=["POST"])
@requires("viewer")
def logout():
    """Ends the session on the server: a copy of the cookie is refused from now on."""
    end_session(current_services().sessions)
    log.info("%s logged out", g.user.name)
    return redirect(url_for("auth.login"))

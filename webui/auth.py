"""Log in, log out, who is asking, and what their role lets them do.

Sessions are Flask's signed cookies holding the user name and a fingerprint
of their password hash; the role is looked up on every request, so changing
a role, a password or removing a user takes effect at once.
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
from webui.users import User, UserDirectory, session_tag

log = logging.getLogger(__name__)
blueprint = Blueprint("auth", __name__)

MAX_CREDENTIAL_CHARS = 256


def session_user(users: UserDirectory) -> User | None:
    """The logged-in user, or None (no session, user removed, or password changed since)."""
    name = session.get("user")
    if not name:
        return None
    user = users.get(name)
    if user is None or session.get("tag") != session_tag(user):
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


def throttle_keys(name: str) -> list[str]:
    return [f"address:{request.remote_addr}", f"user:{name.lower()}"]


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
    keys = throttle_keys(name)
    wait = services.throttle.retry_after(keys)
    if wait is not None:
        log.warning("login throttled for %r from %s", name, request.remote_addr)
        message = f"Too many failed attempts. Try again in {math.ceil(wait)} s."
        response = render_template("login.html", next=target, error=message, username=name)
        return response, 429, {"Retry-After": str(math.ceil(wait))}
    user = services.users.authenticate(name, password) if name and password else None
    if user is None:
        services.throttle.record_failure(keys)
        log.info("failed login for %r from %s", name, request.remote_addr)
        return render_template("login.html", next=target, error="Wrong user name or password.", username=name), 401
    services.throttle.forget(f"user:{name.lower()}")
    start_session(user)
    log.info("%s logged in from %s", user.name, request.remote_addr)
    return redirect(target)


def start_session(user: User) -> None:
    session.clear()
    session.permanent = True
    session["user"] = user.name
    session["tag"] = session_tag(user)  # session.clear() also dropped the CSRF token: a new one after login


@blueprint.route("/logout", methods=["POST"])
@requires("viewer")
def logout():
    session.clear()
    return redirect(url_for("auth.login"))

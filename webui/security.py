"""Request hardening: CSRF tokens, security headers, login throttling, safe redirects.

CSRF is a per-session random token (no extra dependency): forms carry it in a
hidden ``csrf_token`` field and scripts in an ``X-CSRF-Token`` header, read
from the page's ``<meta name="csrf-token">``. It is checked for *every*
state-changing request in one ``before_request`` hook, so a new POST route
is protected without anyone remembering to. Cross-site requests flagged by
the browser (``Sec-Fetch-Site: cross-site``) are refused as well.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from urllib.parse import urlsplit

from flask import Response, request, session

CSRF_SESSION_KEY = "csrf"
CSRF_FORM_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Scripts, styles, fonts and data from this origin only; frames arrive as
# data: URLs (base64 JPEG as published). No inline script or style anywhere.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


# -- CSRF -------------------------------------------------------------------------------------
def csrf_token() -> str:
    """The session's token, created on first use (also for the login form: login CSRF)."""
    token = session.get(CSRF_SESSION_KEY)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def csrf_failure() -> str | None:
    """Why this request fails the CSRF check, or None if it passes (safe methods always pass)."""
    if request.method in SAFE_METHODS:
        return None
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return "cross-site request refused"
    expected = session.get(CSRF_SESSION_KEY)
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FORM_FIELD, "")
    if not expected or not sent or not hmac.compare_digest(str(expected), str(sent)):
        return "missing or invalid CSRF token; reload the page and try again"
    return None


# -- headers ------------------------------------------------------------------------------------
def add_security_headers(response: Response, *, https: bool) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if https:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if not request.path.startswith(("/static/", "/vendor/")):
        # Pages and data are per user: never cache them in shared caches or the back button.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-site paths after login: no open redirect to another host."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


# -- login throttling -----------------------------------------------------------------------------
class LoginThrottle:
    """At most ``attempts`` failed logins per key (address, user name) in a sliding window.

    Memory is bounded: at most ``max_keys`` keys, the least recently used
    forgotten first.
    """

    def __init__(self, attempts: int, window_s: float, max_keys: int = 10_000, clock=time.monotonic) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, keys: list[str]) -> float | None:
        """Seconds until one of ``keys`` may try again, or None if none is blocked."""
        now = self._clock()
        with self._lock:
            waits = [self._wait(key, now) for key in keys]
        blocked = [wait for wait in waits if wait > 0]
        return max(blocked) if blocked else None

    def _wait(self, key: str, now: float) -> float:
        failures = self._recent(key, now)
        if len(failures) < self.attempts:
            return 0.0
        return failures[0] + self.window_s - now

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def record_failure(self, keys: list[str]) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                failures = self._recent(key, now)
                failures.append(now)
                self._failures[key] = failures
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

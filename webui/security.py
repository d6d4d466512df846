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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Response, request, session

CSRF_SESSION_KEY = "csrf"
CSRF_FORM_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

def content_security_policy(style_hashes: list[str]) -> str:
    """Scripts, styles, fonts and data from this origin only; frames arrive as data: URLs.

    No inline script anywhere, and no nonce either: every script is a file.
    Styles: our own files, plus exactly the <style> elements plotly.js creates,
    allowed by their SHA-256 (:func:`webui.vendor.plotly_style_hashes`): one
    empty element that plotly fills through the CSSOM, and maplibre's bundled
    CSS. A hash allows only that exact text, so an injected <style> with any
    content is still refused; 'unsafe-inline' (any style element or attribute)
    would let injected markup restyle the page, and a nonce cannot be given to
    elements a library creates on its own. Style *attributes* stay refused too:
    plotly sets element styles through the CSSOM, which the CSP does not govern.
    """
    return "; ".join((
        "default-src 'self'",
        "script-src 'self'",
        " ".join(["style-src 'self'", *style_hashes]),
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


SECURITY_HEADERS = {
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
def add_security_headers(response: Response, *, policy: str, https: bool) -> Response:
    response.headers.setdefault("Content-Security-Policy", policy)
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
@dataclass
class Failures:
    count: int = 0
    last_at: float = 0.0


class LoginThrottle:
    """Progressive delays after failed logins, per address and per account; never a lock-out.

    Each failure makes the next try wait longer: none for the first
    ``free_attempts``, then ``first_delay_s``, doubling up to ``max_delay_s``
    (a 429 with Retry-After until then; the password is not even checked).

    * Per address: one address guessing at any accounts slows down.
    * Per account: every failure on an account, from anywhere, counts, but the
      wait applies only to an address that has itself failed on that account,
      counted from its own last failure. So an address that has not failed on
      the account, such as its real owner's, always gets to try at once, while
      each attacking address gets one guess per ``max_delay_s`` once the
      account is under attack. A hard lock (the old behaviour) let anyone lock
      the admin out by failing on purpose.

    Failures are forgotten after ``forget_after_s`` without a new one. Memory
    is bounded: at most ``max_keys`` keys, the least recently used forgotten first.
    """

    def __init__(
        self,
        free_attempts: int,
        first_delay_s: float,
        max_delay_s: float,
        forget_after_s: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_attempts = free_attempts
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, Failures] = OrderedDict()
        self._lock = threading.Lock()

    def delay_after(self, failures: int) -> float:
        """How long a try must wait after ``failures`` failures: 0, …, 0, first, 2×first, 4×first … capped."""
        if failures < self.free_attempts:
            return 0.0
        doublings = min(failures - self.free_attempts, 60)  # 2**60 × any delay is past every cap
        return min(self.first_delay_s * 2**doublings, self.max_delay_s)

    def retry_after(self, address: str, account: str) -> float | None:
        """Seconds until ``address`` may try ``account`` again, or None if it may try now."""
        now = self._clock()
        with self._lock:
            by_address = self._get(f"address:{address}", now)
            pair = self._get(f"pair:{account}\n{address}", now)
            by_account = self._get(f"account:{account}", now)
        waits = [by_address.last_at + self.delay_after(by_address.count) - now]
        if pair.count:
            waits.append(pair.last_at + self.delay_after(max(pair.count, by_account.count)) - now)
        wait = max(waits)
        return wait if wait > 0 else None

    def record_failure(self, address: str, account: str) -> None:
        now = self._clock()
        with self._lock:
            for key in (f"address:{address}", f"account:{account}", f"pair:{account}\n{address}"):
                failures = self._get(key, now)
                failures.count += 1
                failures.last_at = now
                self._failures[key] = failures
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def record_success(self, address: str, account: str) -> None:
        """The owner got in from here: their own typos no longer count against this address.

        The address and account counts stay: logging in to one's own account
        must not reset a guesser's budget for the others.
        """
        with self._lock:
            self._failures.pop(f"pair:{account}\n{address}", None)

    def _get(self, key: str, now: float) -> Failures:
        failures = self._failures.get(key)
        if failures is None or now - failures.last_at > self.forget_after_s:
            return Failures()
        return failures

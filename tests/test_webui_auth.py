"""Login, roles, CSRF and hardening, over real HTTP against the real server (no browser needed)."""

from __future__ import annotations

import json
import re
import urllib.parse

from werkzeug.routing import IntegerConverter

from tests.webui_helpers import (
    PASSWORDS,
    full_store,
    FakeClock,
    HttpSession,
    copy_session_cookie,
    csrf_of,
    form_log_in,
    seed_history,
    start_webui,
    webui_config,
)
from tests.webui_helpers import webui, webui_app  # noqa: F401 (shared fixtures)
from webui.app import PUBLIC_ENDPOINTS, create_app
from webui.security import LoginThrottle
from webui.services import build_services
from webui.users import add_user, remove_user

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def every_route(app) -> list[tuple[str, str, str]]:
    """(endpoint, method, concrete URL) for every rule of the app, so new routes are covered automatically."""
    routes = []
    with app.test_request_context():
        from flask import url_for

        for rule in app.url_map.iter_rules():
            values = {}
            for argument in rule.arguments:
                converter = rule._converters[argument]
                values[argument] = 1 if isinstance(converter, IntegerConverter) else ("css/app.css" if argument == "filename" else "cam-a")
            url = url_for(rule.endpoint, **values)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                routes.append((rule.endpoint, method, url))
    return routes


def test_every_route_needs_a_login_redirect_for_pages_401_for_the_api(webui):
    routes = every_route(webui.app)
    endpoints = {endpoint for endpoint, _, _ in routes}
    assert PUBLIC_ENDPOINTS <= endpoints and PUBLIC_ENDPOINTS == {"auth.login", "static", "health"}
    assert {"api.stream", "api.send_command", "api.add_label", "assets.result_frame", "pages.history"} <= endpoints
    anonymous = HttpSession(webui.url)
    checked = 0
    for endpoint, method, url in routes:
        if endpoint in PUBLIC_ENDPOINTS:
            continue
        response = anonymous.request(method, url, data=b"{}" if method in UNSAFE_METHODS else None, headers={"Content-Type": "application/json"})
        if url.startswith("/api/"):
            assert response.status == 401, f"{method} {url} answered {response.status} without a session"
            assert response.json() == {"error": "login required"}
        else:
            assert response.status == 302, f"{method} {url} answered {response.status} without a session"
            assert response.headers["Location"].startswith("/login?next=")
        checked += 1
    assert checked >= 15
    assert anonymous.get("/no/such/page").status == 302  # unknown paths reveal nothing either


def test_every_protected_view_declares_the_role_it_needs(webui):
    for endpoint, view in webui.app.view_functions.items():
        if endpoint in PUBLIC_ENDPOINTS:
            continue
        assert getattr(view, "required_role", None) in ("viewer", "labeller", "admin"), f"{endpoint} has no @requires(role)"


def test_a_post_without_the_csrf_token_is_refused(webui):
    admin = HttpSession(webui.url)
    assert admin.log_in("admin").status == 302
    for path, body in (("/api/devices/cam-a/commands", {"command": "ping"}), ("/api/labels", {"face_id": 1, "label": "happy"})):
        assert admin.post_json(path, body).status == 403
        assert admin.post_json(path, body, csrf="forged").status == 403
    refused = admin.post_form("/logout", {})
    assert refused.status == 403 and "CSRF" in refused.text
    cross_site = admin.request(
        "POST", "/api/devices/cam-a/commands", data=b'{"command": "ping"}',
        headers={"Content-Type": "application/json", "X-CSRF-Token": admin.csrf_token, "Sec-Fetch-Site": "cross-site"},
    )
    assert cross_site.status == 403
    accepted = admin.post_json("/api/devices/cam-a/commands", {"command": "ping"}, csrf=admin.csrf_token)
    assert accepted.status == 202, accepted.text
    assert accepted.json()["user"] == "admin"
    assert admin.post_form("/logout", {"csrf_token": admin.csrf_token}).status == 302
    assert admin.get("/api/me").status == 401


def test_a_viewer_cannot_send_commands_or_label_and_a_labeller_cannot_command(webui):
    viewer = HttpSession(webui.url)
    assert viewer.log_in("viewer").status == 302
    assert viewer.get("/").status == 200 and viewer.get("/history").status == 200
    assert viewer.post_json("/api/devices/cam-a/commands", {"command": "pause"}, csrf=viewer.csrf_token).status == 403
    assert viewer.post_json("/api/labels", {"face_id": 1, "label": "sad"}, csrf=viewer.csrf_token).status == 403
    assert viewer.get("/labelling").status == 403
    assert viewer.get("/api/labels/queue").status == 403
    assert 'data-command="pause"' in viewer.get("/").text and 'data-can-command="0"' in viewer.get("/").text

    labeller = HttpSession(webui.url)
    assert labeller.log_in("lab").status == 302
    assert labeller.get("/labelling").status == 200
    assert labeller.post_json("/api/devices/cam-a/commands", {"command": "pause"}, csrf=labeller.csrf_token).status == 403
    missing_face = labeller.post_json("/api/labels", {"face_id": 999, "label": "sad"}, csrf=labeller.csrf_token)
    assert missing_face.status == 404


def test_invalid_commands_are_refused_with_the_reason(webui):
    admin = HttpSession(webui.url)
    admin.log_in("admin")
    bad_fps = admin.post_json("/api/devices/cam-a/commands", {"command": "set_fps", "args": {"fps": 500}}, csrf=admin.csrf_token)
    assert bad_fps.status == 400 and "fps" in bad_fps.json()["error"]
    unknown = admin.post_json("/api/devices/cam-a/commands", {"command": "self_destruct"}, csrf=admin.csrf_token)
    assert unknown.status == 400
    hostile = admin.post_json("/api/devices/cam%2Fa/commands", {"command": "ping"}, csrf=admin.csrf_token)
    assert hostile.status in (400, 404)


ATTACKER, SECOND_ATTACKER, OWNER = "203.0.113.66", "203.0.113.67", "198.51.100.7"


def throttled_app(webui_app) -> FakeClock:
    """Give the app a throttle on a hand-moved clock (defaults: 5 free, 1 s doubling to 60 s)."""
    clock = FakeClock()
    webui_app.extensions["emq"].throttle = LoginThrottle(5, 1.0, 60.0, 900, clock=clock)
    return clock


def test_wrong_passwords_wait_longer_and_longer_never_a_lock(webui_app):
    clock = throttled_app(webui_app)
    attacker = webui_app.test_client()
    for _ in range(5):
        assert form_log_in(attacker, "admin", "wrong-password", address=ATTACKER).status_code == 401
    waits = []
    for _ in range(8):
        refused = form_log_in(attacker, "admin", PASSWORDS["admin"], address=ATTACKER)
        assert refused.status_code == 429, "while it waits, not even the right password is checked"
        waits.append(int(refused.headers["Retry-After"]))
        clock.advance(waits[-1])
        assert form_log_in(attacker, "admin", "wrong-password", address=ATTACKER).status_code == 401, "after the wait, a try"
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60], "doubling, capped at login_max_delay_s"
    assert form_log_in(webui_app.test_client(), "viewer", address=ATTACKER).status_code == 429, "that address, any account"
    clock.advance(900 + 61)
    assert form_log_in(attacker, "admin", address=ATTACKER).status_code == 302, "forgotten after login_forget_after_s"


def test_the_owner_gets_in_from_another_address_while_the_account_is_hammered(webui_app):
    clock = throttled_app(webui_app)
    attacker = webui_app.test_client()
    failures = 0
    for attempt in range(30):
        status = form_log_in(attacker, "admin", f"guess-{attempt}", address=ATTACKER).status_code
        assert status in (401, 429)
        failures += status == 401
        clock.advance(0.5)
        if attempt % 10 == 9:
            owner = webui_app.test_client()
            assert form_log_in(owner, "admin", address=OWNER).status_code == 302, f"owner locked out after {attempt + 1} guesses"
            assert owner.get("/api/me").get_json() == {"user": "admin", "role": "admin"}
    assert failures == 8, "5 free, then after 1, 2 and 4 s (guesses every 0.5 s for 15 s)"
    # Spreading guesses over addresses does not help: one failure on the hammered account, then the account's delay.
    second = webui_app.test_client()
    assert form_log_in(second, "admin", "guess-x", address=SECOND_ATTACKER).status_code == 401
    refused = form_log_in(second, "admin", "guess-y", address=SECOND_ATTACKER)
    throttle = webui_app.extensions["emq"].throttle
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == throttle.delay_after(failures + 1) >= 16
    assert form_log_in(second, "viewer", address=SECOND_ATTACKER).status_code == 302, "its other accounts are not held up"


def test_a_copied_session_cookie_is_refused_after_logout(webui_app):
    browser = webui_app.test_client()
    assert form_log_in(browser, "viewer").status_code == 302
    thief = copy_session_cookie(webui_app, browser)
    assert thief.get("/api/me").get_json() == {"user": "viewer", "role": "viewer"}, "a copy works while the session is open"
    assert browser.post("/logout", data={"csrf_token": csrf_of(browser)}).status_code == 302
    assert browser.get("/api/me").status_code == 401
    assert thief.get("/api/me").status_code == 401, "the copied cookie names a closed session"
    assert thief.get("/history").status_code == 302
    assert webui_app.extensions["emq"].sessions.count() == 0


def test_a_copied_session_cookie_is_refused_after_a_password_change(webui_app):
    users_file = webui_app.extensions["emq"].config.auth.users_file
    add_user(users_file, "carol", "viewer", "carol-password-1")
    browser = webui_app.test_client()
    assert form_log_in(browser, "carol", "carol-password-1").status_code == 302
    thief = copy_session_cookie(webui_app, browser)
    assert thief.get("/api/me").status_code == 200
    add_user(users_file, "carol", "viewer", "carol-password-2", replace=True)
    assert thief.get("/api/me").status_code == 401
    assert browser.get("/api/me").status_code == 401
    assert form_log_in(browser, "carol", "carol-password-2").status_code == 302
    assert browser.get("/api/me").get_json()["user"] == "carol"


def test_sessions_are_kept_on_the_server_and_survive_a_restart(webui_app):
    browser = webui_app.test_client()
    assert form_log_in(browser, "lab").status_code == 302
    cookie = browser.get_cookie("emq_session").value
    services = webui_app.extensions["emq"]
    stored = services.sessions.path.read_bytes()
    assert b"lab" in stored and cookie.encode() not in stored
    restarted = create_app(services.config, services=build_services(services.config, connect=False))
    try:
        assert copy_session_cookie(restarted, browser).get("/api/me").get_json()["user"] == "lab"
    finally:
        restarted.extensions["emq"].stop()
    assert services.sessions.path.stat().st_mode & 0o077 == 0, "owner only"


def test_login_never_redirects_off_site(webui):
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        client = HttpSession(webui.url)
        response = client.log_in("viewer", next_path=target)
        assert response.status == 302 and response.headers["Location"] == "/", target


def test_cookies_and_security_headers(webui, tmp_path, pki_dir, broker):
    client = HttpSession(webui.url)
    login_page = client.get("/login")
    csp = login_page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "nonce-" not in csp and "unsafe-hashes" not in csp and "style-src-attr" not in csp
    style_sources = next(part for part in csp.split("; ") if part.startswith("style-src ")).split()[1:]
    assert style_sources[0] == "'self'" and all(source.startswith("'sha256-") for source in style_sources[1:])
    assert "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='" in style_sources, "plotly's empty <style>, filled by insertRule"
    assert login_page.headers["X-Frame-Options"] == "DENY"
    assert login_page.headers["X-Content-Type-Options"] == "nosniff"
    assert login_page.headers["Referrer-Policy"] == "same-origin"
    token = client.page_csrf_token("/login")
    response = client.post_form("/login", {"username": "viewer", "password": PASSWORDS["viewer"], "csrf_token": token})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/api/me").headers["Cache-Control"] == "no-store"
    assert "<script>" not in client.get("/").text, "no inline scripts (the CSP forbids them)"

    secure = webui_config(tmp_path / "secure", pki_dir, broker.settings.tls_port, auth={"secure_cookies": True})
    app = create_app(secure, services=build_services(secure, connect=False))
    test_client = app.test_client()
    test_client.get("/login")
    with test_client.session_transaction() as session:
        token = session["csrf"]
    logged_in = test_client.post("/login", data={"username": "viewer", "password": PASSWORDS["viewer"], "csrf_token": token})
    assert "Secure" in logged_in.headers["Set-Cookie"]
    assert logged_in.headers["Strict-Transport-Security"].startswith("max-age=")
    app.extensions["emq"].stop()


def test_removing_a_user_or_changing_the_password_ends_their_sessions(webui):
    users_file = webui.services.config.auth.users_file
    add_user(users_file, "carol", "viewer", "carol-password-1")
    client = HttpSession(webui.url)
    assert client.log_in("carol", "carol-password-1").status == 302
    assert client.get("/api/me").json() == {"user": "carol", "role": "viewer"}
    add_user(users_file, "carol", "admin", "carol-password-2", replace=True)
    assert client.get("/api/me").status == 401, "a new password invalidates the old session"
    assert client.log_in("carol", "carol-password-2").status == 302
    assert client.get("/api/me").json()["role"] == "admin"
    remove_user(users_file, "carol")
    assert client.get("/api/me").status == 401


def test_the_api_returns_json_errors(webui):
    client = HttpSession(webui.url)
    client.log_in("viewer")
    assert client.get("/api/results?emotion=bored").status == 400
    assert "emotion" in client.get("/api/results?emotion=bored").json()["error"]
    assert client.get("/api/results?since=yesterday").status == 400
    assert client.get("/api/results/12345").status == 404
    assert json.loads(client.get("/api/results").body) == {"total": 0, "limit": 50, "offset": 0, "items": []}


def test_behind_a_trusted_proxy_the_forwarded_address_and_scheme_count(broker, pki_dir, tmp_path):
    running = start_webui(webui_config(tmp_path, pki_dir, broker.settings.tls_port, server={"trusted_proxy": "127.0.0.1"}))
    try:
        def login(user: str, password: str, address: str):
            client = HttpSession(running.url)
            token = client.page_csrf_token("/login")
            body = urllib.parse.urlencode({"username": user, "password": password, "csrf_token": token}).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": address, "X-Forwarded-Proto": "https"}
            return client.request("POST", "/login", data=body, headers=headers)

        for _ in range(5):
            assert login("admin", "wrong-password", "203.0.113.1").status == 401
        assert login("viewer", PASSWORDS["viewer"], "203.0.113.1").status == 429, "that (forwarded) address is throttled"
        allowed = login("admin", PASSWORDS["admin"], "203.0.113.2")
        assert allowed.status == 302, "another address: not throttled, even for the attacked account"
        assert allowed.headers["Strict-Transport-Security"].startswith("max-age="), "X-Forwarded-Proto https believed"
    finally:
        running.stop()


def test_the_back_link_of_a_result_never_leaves_the_site(webui_app):
    services = webui_app.extensions["emq"]
    seeded = seed_history(full_store(services), services.config.store.data_dir, 2)
    client = webui_app.test_client()
    assert form_log_in(client, "viewer").status_code == 302
    result_path = f"/results/{seeded[0].result_id}"

    def back_link(path: str, **headers) -> str:
        page = client.get(path, headers=headers)
        assert page.status_code == 200
        return re.search(r'<a href="([^"]*)" id="back-to-history"', page.get_data(as_text=True)).group(1)

    assert back_link(result_path, Referer="https://evil.example/history") == "/history", "the Referer is not used"
    for forged in ("//evil.example/history", "https://evil.example/?a=1", "javascript:alert(1)", "emotion=sad&next=//evil.example"):
        link = back_link(f"{result_path}?history={urllib.parse.quote(forged)}")
        assert link.startswith("/history") and "evil" not in link and "javascript" not in link, (forged, link)
    assert back_link(f"{result_path}?history={urllib.parse.quote('emotion=sad&page=2&x=<script>')}") == "/history?emotion=sad&amp;page=2"
    history = client.get(f"/history?emotion={seeded[0].label}&bogus=1").get_data(as_text=True)
    assert f'href="{result_path}?history=emotion%3D{seeded[0].label}"' in history, "rows link to their result with the list's filters"

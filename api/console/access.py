"""Signing in to the console with an API key, and signing out.

The key is posted once, checked as the API checks it, and forgotten: the
session keeps the tenant and the key's hash. The sign-in form carries a token
that must match a short-lived cookie set with the form (a double submit), so
another site cannot sign a browser in to its own tenant.
"""

from __future__ import annotations

import hmac
import secrets

from flask import Response, current_app, redirect, request, url_for

from api.console import sessions
from api.console.blueprint import bp, page, session
from api.context import runtime
from worker.store import tenants

SIGN_IN_COOKIE = "console_sign_in"
SIGN_IN_SECONDS = 3600
REASONS = {
    "revoked": "Your session ended: its API key was revoked. Sign in with a live key.",
    "signed_out": "You are signed out.",
}


@bp.get("/")
def home() -> Response:
    return redirect(url_for("console.batches_page"), 303)  # type: ignore[return-value]


@bp.get("/sign-in")
def sign_in() -> Response:
    token = secrets.token_urlsafe(32)
    notice = REASONS.get(request.args.get("reason", ""))
    html, status = page("sign_in.html", token=token, notice=notice, error=None, hours=_hours())
    response = Response(html, status, mimetype="text/html")
    sessions.set_cookie(response, SIGN_IN_COOKIE, token, SIGN_IN_SECONDS)
    return response


@bp.post("/sign-in")
def sign_in_post() -> Response:
    given = request.form.get("sign_in_token", "")
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return _form_again(403, "This sign-in form has expired; please try again.")
    key = request.form.get("api_key", "").strip()
    rt = runtime()
    tenant = tenants.authenticate(rt.store, key) if 0 < len(key) <= 512 else None
    if tenant is None:
        return _form_again(401, "That API key is not valid (or was revoked).")
    cookie, _ = sessions.start(current_app, rt, tenant, tenants.hash_key(key))
    response: Response = redirect(url_for("console.batches_page"), 303)  # type: ignore[assignment]
    sessions.set_cookie(response, sessions.COOKIE, cookie, rt.settings.console_session_seconds)
    sessions.clear_cookie(response, SIGN_IN_COOKIE)
    return response


def _form_again(status: int, error: str) -> Response:
    token = secrets.token_urlsafe(32)
    html, _ = page("sign_in.html", token=token, notice=None, error=error, hours=_hours())
    response = Response(html, status, mimetype="text/html")
    sessions.set_cookie(response, SIGN_IN_COOKIE, token, SIGN_IN_SECONDS)
    return response


def _hours() -> int:
    return max(1, runtime().settings.console_session_seconds // 3600)


@bp.post("/sign-out")
def sign_out() -> Response:
    sessions.end(runtime(), session())
    target = url_for("console.sign_in", reason="signed_out")
    response: Response = redirect(target, 303)  # type: ignore[assignment]
    sessions.clear_cookie(response, sessions.COOKIE)
    return response

"""The console's blueprint and what every console response shares: its session
check, CSRF check, security headers and error pages.

The session check runs for every /console path before the rate limits and
quotas (it is registered right after the API's key check), and puts the
session's tenant on the request exactly where the key check puts an API
key's: every page then reads and writes through the same functions as the
/v1 routes, for that tenant only.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from api.console import sessions
from api.context import runtime
from api.context import settings as rt_settings
from api.errors import ApiError
from worker.services import intake
from worker.store import tenants

HERE = Path(__file__).resolve().parent.parent
bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder=str(HERE / "templates"),
    static_folder=str(HERE / "static" / "console"),
    static_url_path="/static",
)

# No inline script or style, no third-party origin, no framing, forms post
# only here, and no <base> to redirect relative URLs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Room for a form's fields and multipart framing around its one upload.
FORM_OVERHEAD = 64 * 1024
# Endpoints open without a session.
PUBLIC = frozenset({"console.sign_in", "console.sign_in_post", "console.static"})


class Refused(ApiError):
    """A console request turned away: its status and what the page says (an
    ApiError, so that outside the blueprint's pages it is answered as one)."""


def is_console() -> bool:
    return request.path == "/console" or request.path.startswith("/console/")


def session() -> sessions.Session:
    value: sessions.Session = g.console
    return value


def register(app: Flask) -> None:
    """The app-level hooks; call right after the API's key check is registered."""

    @app.before_request
    def authenticate() -> Response | None:
        if not is_console():
            return None
        _check_origin()
        # No form is bigger than a manifest (multipart parts go to disk, and the
        # body is read under the serving layer's body deadline).
        request.max_content_length = rt_settings().console_max_manifest_bytes + FORM_OVERHEAD
        if request.endpoint in PUBLIC:
            return None
        rt = runtime()
        try:
            found = sessions.load(app, rt)
        except RedisError:
            raise Refused(
                503, "The console's sessions are unavailable; try again shortly"
            ) from None
        if found is None:
            return signed_out("")
        # The key behind the session is checked on every request, so revoking it
        # ends the console's session as it ends the key's API access.
        if tenants.authenticate_hash(rt.store, found.key_hash) != found.tenant:
            sessions.end(rt, found)
            return signed_out("revoked")
        g.tenant = found.tenant
        g.console = found
        g.key_hash = found.key_hash
        return None

    @app.after_request
    def security_headers(response: Response) -> Response:
        if is_console():
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)
        return response


@bp.before_request
def check_csrf() -> None:
    """Every POST of a signed-in page carries its session's token. Checked here,
    after the app's rate limits and shares (which run first), so a form's body
    is read only once they have let the request in, as a /v1 body is."""
    found: sessions.Session | None = g.get("console")
    if request.method != "POST" or found is None:
        return
    given = request.form.get("csrf_token", "")
    if not hmac.compare_digest(given.encode(), found.csrf.encode()):
        raise Refused(403, "This form has expired; go back, reload the page and try again")


def _check_origin() -> None:
    """A state-changing request must come from a console page: a browser says
    where a request comes from, and SameSite=Strict alone does not cover the
    sign-in form (there is no session cookie yet)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Refused(403, "Console forms can only be sent from the console's own pages")
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        parts = urlsplit(origin)
        if parts.netloc != request.host or parts.scheme != request.scheme:
            raise Refused(403, "Console forms can only be sent from the console's own pages")


def signed_out(reason: str) -> Response:
    """To the sign-in page (a page's request), or 401 (the live refresh's)."""
    response: Response
    if request.method == "GET" and not (request.endpoint or "").endswith("_live"):
        target = url_for("console.sign_in", reason=reason or None)
        response = redirect(target, 303)  # type: ignore[assignment]
    else:
        response = Response("Signed out", 401, mimetype="text/plain")
    sessions.clear_cookie(response, sessions.COOKIE)
    return response


def page(template: str, code: int = 200, /, **context: Any) -> tuple[str, int]:
    return render_template(f"console/{template}", **context), code


def _error_page(status: int, message: Any) -> tuple[str, int]:
    signed_in = g.get("console") is not None
    return page("error.html", status, status=status, message=message, signed_in=signed_in)


@bp.errorhandler(ApiError)
def api_error(exc: ApiError) -> tuple[str, int]:
    return _error_page(exc.status, exc.detail)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[str, int]:
    return _error_page(exc.code or 500, exc.description or exc.name)


@bp.errorhandler(intake.Unavailable)
@bp.errorhandler(PyMongoError)
@bp.errorhandler(RedisError)
def unavailable(exc: Exception) -> tuple[str, int]:
    current_app.logger.warning("console: store unavailable: %s", exc)
    return _error_page(503, "The service's store is unavailable; try again shortly")


@bp.app_template_global()
def csrf_token() -> str:
    found: sessions.Session | None = g.get("console")
    return found.csrf if found is not None else ""


@bp.app_template_filter("when")
def when(at: float | None, short: bool = False) -> str:
    """A Unix time as the pages show it: UTC, to the second (to the minute in
    tables, whose column says UTC)."""
    if at is None:
        return "—"
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("iso")
def iso(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")

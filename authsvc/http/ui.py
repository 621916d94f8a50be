"""The small enrollment and login page (/ui): static HTML, CSS and the reference client.

Served only when ``Settings.ui_served`` (development by default; production needs
``AUTHSVC_UI_ENABLED=true``), with a Content-Security-Policy that allows scripts, styles and
requests from this origin only.
"""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response

from authsvc.errors import NotFound
from authsvc.http.io import deps

bp = Blueprint("ui", __name__)

ASSETS = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _file(name: str) -> bytes:
    return resources.files("authsvc").joinpath("ui", name).read_bytes()


@bp.before_request
def _enabled() -> None:
    if not deps().settings.ui_served:
        raise NotFound("The page is not enabled on this server")


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return response


@bp.get("/ui/")
def ui() -> Response:
    return Response(_file("index.html"), mimetype="text/html")


@bp.get("/ui/<asset>")
def ui_asset(asset: str) -> Response:
    mimetype = ASSETS.get(asset)
    if mimetype is None:
        raise NotFound("No such file")
    return Response(_file(asset), mimetype=mimetype)

"""The small enrollment and login page (/ui), and the pages mailed links open
(/verify-email, /reset-password): static HTML, CSS and the reference client.

/ui is served only when ``Settings.ui_served`` (development by default; production needs
``AUTHSVC_UI_ENABLED=true``); the link pages always, as every mail links to them. Both with a
Content-Security-Policy that allows scripts, styles and requests from this origin only.
"""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response

from authsvc.errors import NotFound
from authsvc.http.io import deps

bp = Blueprint("ui", __name__)
links = Blueprint("links", __name__)

ASSETS = {
    "app.js": "text/javascript",
    "client.js": "text/javascript",
    "style.css": "text/css",
}
LINK_ASSETS = {
    "client.js": "text/javascript",
    "links.js": "text/javascript",
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
@links.after_request
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
    return _asset(ASSETS, asset)


@links.get("/verify-email")
@links.get("/reset-password")
def link_page() -> Response:
    """The token stays in the query string: the page reads it, drops it from the address bar
    and sends it only when the person acts on the page."""
    return Response(_file("links.html"), mimetype="text/html")


@links.get("/links/<asset>")
def link_asset(asset: str) -> Response:
    return _asset(LINK_ASSETS, asset)


def _asset(served: dict[str, str], name: str) -> Response:
    mimetype = served.get(name)
    if mimetype is None:
        raise NotFound("No such file")
    return Response(_file(name), mimetype=mimetype)

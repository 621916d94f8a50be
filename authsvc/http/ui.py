"""The small enrollment and login page (/ui)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("ui", __name__)

"""Breach responses and forced resets under /admin/v1."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("breach", __name__)

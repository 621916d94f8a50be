"""Audit events for admins and users' own security events."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("audit", __name__)

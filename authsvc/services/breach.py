"""Breach response: forced password resets for many accounts."""

from __future__ import annotations

from authsvc.services.outbox import Handler

# Outbox handlers this capability contributes, by message kind.
HANDLERS: dict[str, Handler] = {}

"""Detection of guessing and stuffing: sliding-window detectors and alerts."""

from __future__ import annotations

from authsvc.services.outbox import Handler

# Outbox handlers this capability contributes, by message kind.
HANDLERS: dict[str, Handler] = {}

"""Structured logs: one JSON object per line on stderr, with the request id on every line.

The formatter is also a last line of defence for what must never be logged: values of fields
named like secrets are replaced, ``token=`` parameters and bearer credentials are cut out of
messages, and email addresses are shortened to their first character and domain.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, TextIO

REQUEST_ID: ContextVar[str | None] = ContextVar("authsvc_request_id", default=None)

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
}
_SECRET_FIELD = re.compile(
    r"pass(word)?|secret|token|authorization|cookie|api_key|^key$", re.IGNORECASE
)
# Query parameters that carry secrets, the form fields of the pages included (password,
# new-password, totp, recovery): a form a browser sends by itself is a request line with them.
_TOKEN_PARAM = re.compile(
    r"((?:token|code|key|password|secret|totp|recovery)[\w-]*=)[^&\s\"'<>]+", re.IGNORECASE
)
_BEARER = re.compile(r"((?:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)
# Local parts and domains that are not ASCII too (the service accepts them): \w is Unicode.
_EMAIL = re.compile(r"([\w.%+'\-])[\w.%+'\-]*@([\w\-]+(?:\.[\w\-]+)+)")
_HANDLER_NAME = "authsvc-json"


def scrub(text: str) -> str:
    text = _TOKEN_PARAM.sub(r"\1[redacted]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _EMAIL.sub(r"\1***@\2", text)


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {
            str(k): "[redacted]" if _SECRET_FIELD.search(str(k)) else _plain(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return scrub(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        for key, value in record.__dict__.items():
            if key in _RECORD_FIELDS or key.startswith("_"):
                continue
            entry[key] = "[redacted]" if _SECRET_FIELD.search(key) else _plain(value)
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure(level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) as JSON lines; safe to call again."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(_level(level))


def _level(level: str) -> int:
    value = logging.getLevelName(level.strip().upper())
    return value if isinstance(value, int) else logging.INFO


def gunicorn_logconfig(level: str = "INFO") -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its own error log goes out as JSON lines too."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"level": logging.getLevelName(_level(level)), "handlers": ["stderr"]},
        "loggers": {
            # Its INFO lines (start, workers booting and exiting) at INFO or DEBUG; its DEBUG
            # lines are per connection.
            "gunicorn.error": {
                "level": logging.getLevelName(max(logging.INFO, _level(level))),
                "handlers": [],
                "propagate": True,
            },
            # authsvc.access logs each request with its request id; no second access line.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }


def bind_request_id(request_id: str) -> Token[str | None]:
    return REQUEST_ID.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    try:
        REQUEST_ID.reset(token)
    except ValueError:  # set in another context (a streamed response); just clear it
        REQUEST_ID.set(None)

"""JSON log lines: one object per line, the request id on every line, nothing secret."""

from __future__ import annotations

import io
import json
import logging

import pytest

from authsvc import logging_setup


@pytest.fixture
def captured():
    """Install the JSON handler on a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    logging_setup.configure("DEBUG", stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_one_json_object_per_line(captured):
    log = logging.getLogger("authsvc.test")
    log.info("first\nsecond", extra={"count": 3, "nested": {"a": [1, 2]}})
    log.warning("plain")
    first, second = lines(captured)
    assert first["msg"] == "first\nsecond" and first["level"] == "INFO"
    assert first["logger"] == "authsvc.test" and first["count"] == 3
    assert first["nested"] == {"a": [1, 2]}
    assert first["ts"].endswith("Z")
    assert first["request_id"] is None and second["level"] == "WARNING"


def test_the_request_id_comes_from_the_context(captured):
    token = logging_setup.bind_request_id("req-123")
    try:
        logging.getLogger("authsvc.test").info("inside")
    finally:
        logging_setup.unbind_request_id(token)
    logging.getLogger("authsvc.test").info("outside")
    inside, outside = lines(captured)
    assert inside["request_id"] == "req-123" and outside["request_id"] is None


@pytest.mark.parametrize(
    ("message", "leak"),
    [
        ("login failed for victim@example.com", "victim@example.com"),
        ("open http://x/reset-password?token=abcDEF123_- now", "abcDEF123_-"),
        ("header Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        # The request line of the development server for a form sent without its script.
        ('"GET /ui/?email=victim@example.com&password=correct+horse+42 HTTP/1.1"', "correct+horse"),
        ("GET /reset-password?new-password=hunter2hunter2&x=1", "hunter2hunter2"),
        ("GET /reset-password?new-password-again=hunter2hunter2", "hunter2hunter2"),
        ("GET /reset-password?totp=123456&recovery=ABCDEFGH2345", "123456"),
        ("GET /reset-password?totp=123456&recovery=ABCDEFGH2345", "ABCDEFGH2345"),
    ],
)
def test_messages_are_scrubbed(captured, message, leak):
    logging.getLogger("authsvc.test").warning(message)
    (entry,) = lines(captured)
    assert leak not in json.dumps(entry)
    if "@" in message:
        assert "v***@example.com" in entry["msg"]


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("josé@example.com", "j***@example.com"),
        ("ada@bücher.de", "a***@bücher.de"),
        ("o'brien@example.com", "o***@example.com"),
        ("名前@例え.jp", "名***@例え.jp"),
    ],
)
def test_addresses_that_are_not_ascii_are_masked_too(captured, address, masked):
    logging.getLogger("authsvc.test").warning("mail to=%s subject=x", address)
    (entry,) = lines(captured)
    assert entry["msg"] == f"mail to={masked} subject=x"


def test_secret_fields_are_redacted(captured):
    logging.getLogger("authsvc.test").info(
        "x",
        extra={
            "password": "hunter2",
            "refresh_token": "rt_abc",
            "alert": {"secret": "s", "ok": 1},
            "email_hash": "f" * 64,
        },
    )
    (entry,) = lines(captured)
    assert entry["password"] == "[redacted]" and entry["refresh_token"] == "[redacted]"
    assert entry["alert"] == {"secret": "[redacted]", "ok": 1}
    assert entry["email_hash"] == "f" * 64


def test_exceptions_are_one_line_and_scrubbed(captured):
    try:
        raise ValueError("bad address ada@example.com")
    except ValueError:
        logging.getLogger("authsvc.test").exception("failed")
    output = captured.getvalue()
    assert output.count("\n") == 1
    (entry,) = lines(captured)
    assert "ValueError" in entry["exc"] and "ada@example.com" not in entry["exc"]


def test_configure_twice_keeps_one_handler(captured):
    logging_setup.configure("INFO", stream=captured)
    logging.getLogger("authsvc.test").info("once")
    assert len(lines(captured)) == 1


def test_gunicorn_logconfig_is_a_valid_dictconfig(captured):
    import logging.config

    config = logging_setup.gunicorn_logconfig("warning")
    assert config["root"]["level"] == "WARNING"
    logging.config.dictConfig(config)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler.formatter, logging_setup.JsonFormatter)


def test_gunicorn_lines_follow_the_configured_level(captured, capsys):
    """AUTHSVC_LOG_LEVEL=WARNING keeps gunicorn's own INFO lines (start, worker boots and
    exits) out of the log too, as every other logger's; at INFO and below they are there."""
    import logging.config

    gunicorn = logging.getLogger("gunicorn.error")
    level = gunicorn.level
    try:
        for configured, shown in (
            ("WARNING", ["worker failed"]),
            ("INFO", ["booting", "worker failed"]),
        ):
            logging.config.dictConfig(logging_setup.gunicorn_logconfig(configured))
            gunicorn.info("booting")
            gunicorn.warning("worker failed")
            output = capsys.readouterr().err
            assert [json.loads(line)["msg"] for line in output.splitlines()] == shown
    finally:
        gunicorn.setLevel(level)


def test_every_request_line_carries_its_request_id_and_no_secrets(captured, api, client):
    api.register("victim@example.com")
    captured.truncate(0)
    captured.seek(0)
    response = client.post(
        "/v1/login",
        headers={"X-Request-Id": "trace-42"},
        json={"email": "victim@example.com", "password": "S3cret-Guess!"},
    )
    assert response.status_code == 401
    assert response.headers["X-Request-Id"] == "trace-42"
    entries = lines(captured)
    assert entries, "a request logs at least its access line"
    assert all(entry["request_id"] == "trace-42" for entry in entries)
    access = [e for e in entries if e["logger"] == "authsvc.access"]
    assert access and access[-1]["status"] == 401 and access[-1]["route"] == "/v1/login"
    text = captured.getvalue()
    assert "victim@example.com" not in text and "S3cret-Guess!" not in text


def test_a_malformed_request_id_is_replaced(client):
    response = client.get("/healthz", headers={"X-Request-Id": "bad id\u00e9<script>"})
    assert response.headers["X-Request-Id"] != "bad id\u00e9<script>"
    assert len(response.headers["X-Request-Id"]) == 16

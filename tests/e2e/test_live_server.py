import http.client
import json
import socket
import urllib.request

import pytest

from tests.e2e import server as live_server
from tests.e2e.server import LiveServer

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("configured", "used"),
    [
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/1"),
        ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/1"),
        ("redis://127.0.0.1:6379/7", "redis://127.0.0.1:6379/7"),
    ],
)
def test_a_server_uses_the_redis_database_it_is_given(tmp_path, monkeypatch, configured, used):
    # Never one picked at random: it empties it, and that one may be another run's.
    monkeypatch.setattr(live_server, "REDIS_URL", configured)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)

    assert LiveServer(tmp_path).env["AUTHSVC_REDIS_URL"] == used
    # Under pytest -n, each worker takes the next number: workers do not empty each other's.
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    number = int(used.rsplit("/", 1)[1]) + 2
    assert LiveServer(tmp_path).env["AUTHSVC_REDIS_URL"] == f"redis://127.0.0.1:6379/{number}"


def test_serve_answers_ready_and_jwks(tmp_path):
    with LiveServer(tmp_path) as server:
        with urllib.request.urlopen(f"{server.url}/readyz") as response:
            body = json.load(response)
        assert body["status"] == "ready"
        with urllib.request.urlopen(f"{server.url}/.well-known/jwks.json") as response:
            keys = json.load(response)["keys"]
        assert keys and keys[0]["alg"] == "EdDSA"


def test_a_chunked_body_over_the_cap_is_refused_by_the_real_server(tmp_path):
    # gunicorn passes a chunked body on without a length; the cap still holds.
    whole = json.dumps({"email": "ada@example.com"}).encode()
    with LiveServer(tmp_path) as server:
        answers = []
        for padding in (64 * 1024, 10):
            conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
            body = whole + b" " * padding
            chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
            conn.request(
                "POST",
                "/v1/password/forgot",
                body=chunks,
                headers={"Content-Type": "application/json"},
                encode_chunked=True,
            )
            response = conn.getresponse()
            answers.append((response.status, json.loads(response.read()).get("code")))
            conn.close()
    assert answers == [(413, "payload_too_large"), (202, None)]


def _raw(server: LiveServer, request: bytes) -> tuple[int, str, dict]:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers["Content-Type"], json.loads(body)


def test_what_the_http_server_refuses_is_problem_json_too(tmp_path):
    secret = "rt_" + "s" * 40
    cases = [
        (b"GET /healthz?x=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(120))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
        (f"get /v1/me?token={secret} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400, "bad_request"),
        (
            b"POST /v1/login HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
            "bad_request",
        ),
    ]
    with LiveServer(tmp_path) as server:
        answers = [_raw(server, request) for request, _, _ in cases]
    for (status, content_type, problem), (_, expected, code) in zip(answers, cases, strict=True):
        assert (status, content_type, problem["code"], problem["status"]) == (
            expected,
            "application/problem+json",
            code,
            expected,
        )
        assert secret not in json.dumps(problem)  # the request line is not echoed


def test_a_chunked_body_the_real_server_cannot_decode_is_a_bad_request(tmp_path):
    # gunicorn decodes the chunks as the app reads the body, and raises its own errors for
    # framing it cannot decode: each was a 500 with a logged traceback.
    head = (
        b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    framings = [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}xx", b"2\r\n{};;\r\n0\r\n\r\n"]
    with LiveServer(tmp_path) as server:
        answers = [_raw(server, head + framing) for framing in framings]
    for status, content_type, problem in answers:
        assert (status, content_type, problem["code"]) == (
            400,
            "application/problem+json",
            "bad_request",
        )

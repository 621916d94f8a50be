import http.client
import json
import urllib.request

import pytest

from tests.e2e.server import LiveServer

pytestmark = pytest.mark.e2e


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

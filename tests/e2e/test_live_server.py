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

#!/usr/bin/env bash
# Schemathesis against a real `authsvc serve` (gunicorn, SQLite, in-memory rate limits raised so
# that nothing is throttled): every documented operation with generated valid and invalid input.
# Fails (non-zero) on any 5xx and on any status, content type or body that openapi.yaml does not
# describe. Passes by bearer token: /admin/v1 with an admin key from `authsvc admin create-key`,
# everything else with a user's access token (/v1/me/sessions with a session of its own).
#
#   .ci/schemathesis.sh            (MAX_EXAMPLES=30 SEED=... to change the budget or the seed;
#                                   SCHEMATHESIS_DATABASE_URL=postgresql://... for PostgreSQL)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MAX_EXAMPLES=${MAX_EXAMPLES:-30}
SEED=${SEED:-20240601}

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
export AUTHSVC_ENV=development
export AUTHSVC_VAR_DIR="$work/var"
export AUTHSVC_MAIL_URL="file://$work/mail"
export AUTHSVC_PUBLIC_URL="$url"
export AUTHSVC_ACCESS_TOKEN_TTL=1h
export AUTHSVC_LIMIT_IP=1000000/minute
export AUTHSVC_LIMIT_EMAIL=1000000/minute
export AUTHSVC_LIMIT_IP_EMAIL=1000000/minute
export AUTHSVC_LIMIT_FAILURES_PER_ACCOUNT=1000000/day
# Light Argon2 parameters: this run checks the contract, not the cost of hashing.
export AUTHSVC_ARGON2_TIME_COST=1 AUTHSVC_ARGON2_MEMORY_KIB=1024
unset AUTHSVC_DATABASE_URL AUTHSVC_REDIS_URL
# SCHEMATHESIS_DATABASE_URL: an empty PostgreSQL database to run against instead of SQLite.
if [ -n "${SCHEMATHESIS_DATABASE_URL:-}" ]; then
  export AUTHSVC_DATABASE_URL="$SCHEMATHESIS_DATABASE_URL"
fi

"$BIN/authsvc" db upgrade
admin_key=$("$BIN/authsvc" admin create-key --name schemathesis 2>/dev/null)
"$BIN/authsvc" serve --host 127.0.0.1 --port "$port" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  if "$BIN/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "$url/readyz" 2>/dev/null; then
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "server exited" >&2; exit 1; }
  sleep 0.2
done

# A verified user and two fresh access tokens (two sessions) for the /v1 routes.
tokens=$(ADMIN_KEY="$admin_key" URL="$url" "$BIN/python" - <<'PY'
import json, os, urllib.request

def post(path, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(os.environ["URL"] + path, data=json.dumps(body).encode(),
                                 headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.load(response)

user = {"email": "fuzz@example.com", "password": "Schemathesis passphrase 12"}
post("/admin/v1/users", {**user, "email_verified": True}, token=os.environ["ADMIN_KEY"])
tokens = [post("/v1/login", user)["access_token"] for _ in range(2)]
for token in tokens:
    check = urllib.request.Request(os.environ["URL"] + "/v1/me",
                                   headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(check, timeout=30) as response:
        assert json.load(response)["email"] == user["email"]
print(*tokens)
PY
)
read -r access_token sessions_token <<<"$tokens"

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
# One worker: Hypothesis describes its filters by parsing their source with ast.parse, which
# CPython 3.11 cannot run in two threads at once ("AST constructor recursion depth mismatch").
common=(--checks "$checks" --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 1
        --request-timeout 30 --generation-database none --no-color)
status=0
# The user passes first: the admin pass may disable or delete that user. /v1/me/sessions on
# a session of its own, last: DELETE /v1/me/sessions/{session_id} with an id that GET listed
# may revoke the session of the token it is sent with: then the rest of the pass got 401 (with
# the default seed, about 200 of its 1,742 cases, the renames and confirms of factors among them).
echo "== schemathesis: everything but /admin and /v1/me/sessions (user access token)"
"$BIN/schemathesis" run "$url/openapi.yaml" --url "$url" "${common[@]}" \
  --exclude-path-regex '^/(admin/|v1/me/sessions)' -H "Authorization: Bearer $access_token" \
  || status=1
echo "== schemathesis: /v1/me/sessions (a second session of that user)"
"$BIN/schemathesis" run "$url/openapi.yaml" --url "$url" "${common[@]}" \
  --include-path-regex '^/v1/me/sessions' -H "Authorization: Bearer $sessions_token" || status=1
echo "== schemathesis: /admin/v1 (admin key)"
"$BIN/schemathesis" run "$url/openapi.yaml" --url "$url" "${common[@]}" \
  --include-path-regex '^/admin/' -H "Authorization: Bearer $admin_key" || status=1

# A 503 for an unreachable backing service is in the contract, but here the database is a local
# file and nothing should ever be unavailable: such a log line fails the run as well.
for failure in "unhandled error" "backing service unavailable"; do
  if grep -q "$failure" "$work/server.log"; then
    echo "== server log: $failure" >&2
    grep -m 5 -A 30 "$failure" "$work/server.log" >&2 || true
    status=1
  fi
done
exit $status

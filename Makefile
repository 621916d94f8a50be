# authsvc — the two commands a new user needs are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-postgres lint fmt bench schemathesis clean

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## Serve on 127.0.0.1:8000 with the embedded defaults (SQLite under var/, dev keys, console mail).
run: $(STAMP)
	$(BIN)/authsvc db upgrade
	$(BIN)/authsvc serve

## The whole suite (SQLite + in-memory limits unless AUTHSVC_TEST_* say otherwise).
PYTEST_ARGS ?=
test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check authsvc tests benchmarks migrations
	$(BIN)/ruff format --check authsvc tests benchmarks migrations
	$(BIN)/mypy authsvc
	BIN=$(BIN) .ci/security.sh

fmt: $(STAMP)
	$(BIN)/ruff check --fix authsvc tests benchmarks migrations
	$(BIN)/ruff format authsvc tests benchmarks migrations

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) var .pytest_cache

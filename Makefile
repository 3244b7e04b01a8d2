# The two commands a newcomer needs: `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The profile: VOXLINE_PROFILE (default local, the offline models); PROFILE=... overrides it
# for one `make run`, exactly like `voxline up --profile`.
PROFILE ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench bench-retrieval chaos soak fuzz system-deps clean dashboards

# Debian packages: espeak-ng voices the simulated caller, sox measures audio; prometheus
# (with promtool) checks the alert rules and scrapes a stack in tests/deploy.
system-deps:
	@if ! command -v espeak-ng >/dev/null 2>&1; then \
		echo "installing espeak-ng (Debian package) for the caller simulator"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng >/dev/null; \
	fi
	@if ! command -v prometheus >/dev/null 2>&1; then \
		echo "installing prometheus (Debian package) for the metrics tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq prometheus >/dev/null; \
	fi
	@if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then \
		echo "installing haproxy (Debian package) to check the compose edge's config"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq haproxy >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m voxline.smart_turn_fetch
	touch $(STAMP)

run: system-deps $(STAMP)
	$(BIN)/voxline up $(if $(PROFILE),--profile $(PROFILE))

test: system-deps $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy proto voxline services deploy

# The caller simulator at 1, 10, 50, 100 and 200 concurrent calls against a fake-provider
# stack: a table, bench-results/<time>/results.json and PNG plots. Nothing is asserted.
# BENCH_ARGS="--quick" for 1, 10, 50 calls only.
bench: system-deps $(STAMP)
	$(BIN)/voxline bench $(BENCH_ARGS)

# Knowledge retrieval (not part of `make test`): recall@3 of BM25, embeddings and hybrid on 50
# questions over a generated handbook, and the per-turn retrieval time at 200 and 500 pages.
# Embedding 700 pages takes minutes on two cores; BENCH_RETRIEVAL_ARGS="--pages 200" for one size.
bench-retrieval: $(STAMP)
	$(BIN)/python -m voxline.bench.retrieval $(BENCH_RETRIEVAL_ARGS)

# Grafana dashboards (deploy/grafana/dashboards/*.json) and alert rules
# (deploy/prometheus/alerts.yml) from deploy/grafana/dashboards.py.
dashboards: $(STAMP)
	$(BIN)/python -m deploy.grafana.generate

# Long runs, not part of `make test` (CHAOS_ARGS / SOAK_ARGS: e.g. "--minutes 1").
# chaos: 20 calls for 5 minutes on two of every service, a random process killed every 20 s.
chaos: system-deps $(STAMP)
	$(BIN)/voxline chaos $(CHAOS_ARGS)

# soak: 100 calls for 10 minutes; every service's memory and per-call state, start to end.
soak: system-deps $(STAMP)
	$(BIN)/voxline soak $(SOAK_ARGS)

# fuzz: the parsers, the webhooks, every HTTP endpoint (schemathesis, from /openapi.json) and
# a live call beside garbage connections (tests/fuzz), for FUZZ_MINUTES shared over the
# targets; progress as it goes, then inputs tried, failures and minutes per target. `make
# test` runs only a small batch of each (no live call).
FUZZ_MINUTES ?= 5
fuzz: system-deps $(STAMP)
	VOXLINE_FUZZ_MINUTES=$(FUZZ_MINUTES) $(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

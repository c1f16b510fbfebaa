# alertstream: `make run` shows the pipeline on a local stack; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install system-packages run test test-unit docs bench bench-heavy bench-short stack-up stack-down clean image compose-up compose-down

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)  ## create .venv and install alertstream with its test tools

system-packages:  ## Debian packages the tests use as real peers (Prometheus, Alertmanager, Chromium, wrk)
	@bash deploy/system-packages.sh

run: install  ## local stack + migrations + worker + demo stream, with a live summary; Ctrl-C stops all
	$(BIN)/alertstream run

test: install system-packages  ## the whole suite; integration tests start their own stack on their own ports
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest tests/unit

bench: install  ## the target: 600 GB/day for 10 minutes on a fresh local stack; results in benchmarks/results/
	$(BIN)/alertstream bench --volume 600GB/day --duration 600

bench-heavy: install  ## the heavy mix (10-alert webhooks, 70% re-sends) at 600 GB/day for 10 minutes, one stateless and one dedup process
	$(BIN)/alertstream bench --volume 600GB/day --duration 600 --load heavy --workers 2 --stateless-workers 1

bench-short: install  ## a few minutes: capacity against the ceilings, flags a large regression against benchmarks/baseline.json
	$(BIN)/alertstream bench --short

docs: install  ## regenerate the configuration reference (docs/configuration.md) and the alert JSON Schema from the code
	$(BIN)/alertstream config --update docs/configuration.md
	$(BIN)/python docs/architecture_diagram.py
	$(BIN)/python deploy/grafana/generate.py
	$(BIN)/python -c "import json; from schemas.alert import alert_json_schema as s; open('schemas/alert.schema.json', 'w').write(json.dumps(s(), indent=2, sort_keys=True) + '\n')"

# Beyond one machine (docs/runbook.md). These need Docker, which the CI machines do not have: the
# files they use are checked against the code by tests/unit/deploy/ instead.
WORKERS ?= 2
image:  ## the container image: worker, gateway and every command (Dockerfile)
	docker build -t alertstream:dev .

compose-up:  ## Kafka (KRaft), PostgreSQL, Elasticsearch, Prometheus, Grafana, WORKERS workers and the gateway
	docker compose -f deploy/docker-compose.yml up -d --build --scale worker=$(WORKERS)

compose-down:
	docker compose -f deploy/docker-compose.yml down

stack-up: install
	@$(BIN)/alertstream stack up

stack-down: install
	@$(BIN)/alertstream stack down

clean:
	-$(BIN)/alertstream stack down
	rm -rf .alertstream

# Two commands on a fresh machine:  `make demo`  (set up, generate sample data, run the job)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install ui lint clean-data

$(BIN)/relaion: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/relaion prepare
	touch $@

install: $(BIN)/relaion

demo: install
	@[ -d data/shards ] || $(BIN)/relaion demo-data --out data --shards 8 --rows 20000
	$(BIN)/relaion run

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

ui: install  # the instance's dagster.yaml first: queued runs, at most one per two CPUs, one per shard
	$(BIN)/python -m assets.instance $(CURDIR)/data/work/dagster
	DAGSTER_HOME=$(CURDIR)/data/work/dagster $(BIN)/dagster dev --host 127.0.0.1 --port 3000

clean-data:
	rm -rf data/shards data/blocklists data/sidecars data/work data/releases data/planted.json

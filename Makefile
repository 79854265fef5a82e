# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest arguments: by default two workers, one module per worker at a time (pytest-xdist loadscope: a module's
# expensive fixtures are built once), the 15 slowest tests listed; the suite is safe to split: free ports, fresh
# databases, tmp dirs; `make test PYTEST_ARGS=` runs it in one process, PYTEST_ARGS="-n 2 -x" stops early
PYTEST_ARGS ?= -n 2 --dist loadscope --durations=15
# MLflow telemetry and progress bars are switched off by quantml itself (quantml/__init__.py)
export PYTHONWARNINGS := ignore

.PHONY: demo test test-all test-server benchmark benchmark-scale lint install clean

# torch first: `pip install torch==2.13.0` takes the CPU wheel; letting another package
# pull torch would fetch a multi-GB CUDA build.
$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	# compat editable mode: Hydra's plugin scan must see hydra_plugins/ (our Optuna sweeper)
	$(BIN)/python -m pip install -q -e ".[test]" --config-settings editable_mode=compat
	touch $@

# the linters (the `dev` extra: ruff, import-linter, pre-commit) on top of the test install
$(BIN)/.lint-installed: $(BIN)/.installed setup.cfg
	$(BIN)/python -m pip install -q -e ".[test,dev]" --config-settings editable_mode=compat
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/quantml train

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -q -m "" -p no:cacheprovider $(PYTEST_ARGS)

# the tracking-server tests on a PostgreSQL of their own (.ci/postgres.sh: installs it as root when
# missing, starts it when stopped), the slow SQLite half included
test-server: install
	QUANTML_TEST_POSTGRES="$$(bash .ci/postgres.sh)" && export QUANTML_TEST_POSTGRES && \
		$(BIN)/python -m pytest -q -m "" -p no:cacheprovider tests/integration/test_server.py $(PYTEST_ARGS)

benchmark: install
	$(BIN)/python -m pytest -q -m benchmark tests/benchmarks -s

# the scale benchmarks of the README's "On one machine" figures, one after another (never in parallel:
# each ratio is measured side by side in one run). The 8.4M-row panel is generated once and cached under
# $$QUANTML_BENCH_CACHE (default /tmp/quantml-bench); 0.1 runs from the worktree at $$QUANTML_V01 (default
# /work/v01: git worktree add /work/v01 1858afd); the TFT's pytorch-forecasting side from
# $$QUANTML_BENCH_VENV (tests/benchmarks/test_bench_tft.py says how to make it). Hours, 8+ GB.
SCALE_BENCHMARKS := test_bench_scale_features.py test_bench_readback.py test_bench_train_scale.py test_bench_tracking_overhead.py test_bench_tft.py
benchmark-scale: install
	$(BIN)/python -m pytest -q -m benchmark -s $(addprefix tests/benchmarks/,$(SCALE_BENCHMARKS))

# ruff (settings in pyproject.toml) and the floors of the package (.importlinter)
lint: $(BIN)/.lint-installed
	$(BIN)/ruff check --no-cache quantml tests hydra_plugins
	$(BIN)/ruff format --check --no-cache quantml tests hydra_plugins
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf multirun outputs mlruns mlartifacts mlflow.db optuna.db

# meshcore: `make demo` runs the mesh on this machine, `make test` runs the whole suite.
# Both create the virtual environment and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-down test bench venv lint clean

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing meshcore with its test tools"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/meshctl demo up --foreground

demo-down: $(STAMP)
	$(BIN)/meshctl demo down

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf $(VENV) .meshcore-demo .pytest_cache test-artifacts

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_build
	$(BIN)/python -m tests.benchmarks.bench_convergence

# meshcore: `make demo` runs the mesh on this machine, `make test` runs the whole suite.
# Both create the virtual environment and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-down test bench venv lint clean lab-up lab-down lab-deps

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing meshcore with its test tools"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@# xds-protos ships older copies of opentelemetry-proto's modules; whichever installs last wins, so put
	@# opentelemetry-proto's own back (the OTLP exporter needs them; Envoy's protos work with either).
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
		"$$($(BIN)/python -c 'import importlib.metadata as m; print("opentelemetry-proto==" + m.version("opentelemetry-proto"))')"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/meshctl demo up --foreground

demo-down: $(STAMP)
	$(BIN)/meshctl demo down

# Two workers, one test file each at a time (--dist loadfile keeps a file's module fixtures and order): the
# lab file (booted hosts, mostly waiting on Ansible over SSH) runs beside the rest of the suite. Every test's
# duration goes to test-artifacts/junit.xml (`python -m tests.tooling.durations` sums them per file).
test: $(STAMP) lab-deps lint
	$(BIN)/python -m pytest -q --durations=15 -n 2 --dist loadfile --junitxml=test-artifacts/junit.xml

# ruff + mypy; findings older than the ratchet are listed in tests/tooling/lint-baseline.txt, which may only shrink.
lint: $(STAMP)
	$(BIN)/python -m tests.tooling.lint

clean:
	rm -rf $(VENV) .meshcore-demo .pytest_cache test-artifacts

# bench_scale runs in short mode here (a small generated mesh, under 2 minutes); the fleet-scale run
# (1,000 services, 200 synthetic proxies + 3 Envoys, ~10+ minutes today) is
# `$(BIN)/python -m tests.benchmarks.bench_scale` (see docs/benchmarks.md). bench_signing --quick measures
# SVID issuance against a bare `cryptography` floor. bench_dataplane (wrk from make lab-deps) measures
# direct vs a minimal Envoy mTLS pair vs the meshcore pair at 500 and 1,000 requests/s (~7 minutes).
bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_build
	$(BIN)/python -m tests.benchmarks.bench_convergence
	$(BIN)/python -m tests.benchmarks.bench_scale --short
	$(BIN)/python -m tests.benchmarks.bench_signing --quick
	$(BIN)/python -m tests.benchmarks.bench_dataplane

# The lab of booted Debian hosts (systemd-nspawn) with meshcore deployed by ansible/playbooks/site.yml;
# needs root. The last line lab-up prints is JSON: hosts, inventory, ingress (see docs/deploy.md).
lab-up: $(STAMP) lab-deps
	@$(BIN)/python lab/deploy.py

lab-down:
	@lab/down.sh

# As root, install what the lab, systemd-analyze, the Prometheus and dashboard tests, the Vagrant check and the
# data-plane benchmark (wrk) need
# (does nothing when not root: those tests then skip and say why).
lab-deps:
	@if [ "$$(id -u)" = 0 ]; then \
		missing=""; \
		for c in debootstrap:debootstrap systemd-nspawn:systemd-container ip:iproute2 ssh:openssh-client systemd-analyze:systemd ruby:ruby \
			prometheus:prometheus promtool:prometheus chromium:chromium vagrant:vagrant wrk:wrk; do \
			command -v $${c%%:*} >/dev/null 2>&1 || missing="$$missing $${c#*:}"; \
		done; \
		if [ -n "$$missing" ]; then \
			echo "==> apt-get install$$missing" >&2; \
			apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				$$(echo $$missing | tr ' ' '\n' | sort -u) >&2; \
		fi; \
	fi

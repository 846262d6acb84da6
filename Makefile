# Stima — make demo | make test | make bench | make reliability | make fresh-check
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint deps clean fresh-check reliability

deps: $(STAMP)

$(STAMP): pyproject.toml $(wildcard setup.py) $(wildcard native/*.c native/*.h native/*.py)
	@PYTHON=$(PYTHON) bash deploy/system-deps.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@# a Sparkplug B host for the tests (pysparkplug needs paho-mqtt 1.x): a folder of its own, on PYTHONPATH only in that process
	@$(PY) -m pip install -q --upgrade --target $(VENV)/sparkplug-host 'pysparkplug==0.6.1' >$(VENV)/sparkplug-host.log 2>&1 \
		|| { cat $(VENV)/sparkplug-host.log; echo "make deps: the tests' Sparkplug host (pysparkplug) did not install"; exit 1; }
	@touch $(STAMP)

demo: deps
	@$(PY) -m hil.demo $(DEMO_ARGS)

test: deps lint
	@$(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

bench: deps
	@failed=""; start=$$(date +%s); for b in tests/bench/bench_*.py; do echo "=== $$b"; t=$$(date +%s); \
	$(PY) $$b || failed="$$failed $$b"; echo "=== $$b: $$(( $$(date +%s) - t )) s"; done; \
	echo "make bench: $$(( $$(date +%s) - start )) s in all"; \
	if [ -n "$$failed" ]; then echo "benchmarks that failed:$$failed"; exit 1; fi

# what the daemon survives, measured (about 25 minutes; not part of make test): prints a table and
# writes docs/reliability.md from the same run. RELIABILITY_ARGS="fuzz sandbox" runs some parts.
reliability: deps
	@command -v clang >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q clang >/dev/null; } || \
		echo "reliability: no clang (Debian package 'clang'): the C core is fuzzed with gcc's sanitizers and a random driver"
	@$(PY) -m tests.reliability $(RELIABILITY_ARGS)

# a fresh minimal Debian 12 root (debootstrap, cached): make test and a short make demo inside, as root
fresh-check:
	@bash deploy/fresh-check.sh

# style and types (make test runs it first); the complexity figure is reported, not enforced
LINTED := gateway protocols hil tests native
lint: deps
	@$(PY) -m ruff check $(LINTED)
	@$(PY) -m ruff format --check $(LINTED)
	@$(PY) -m mypy --strict gateway protocols
	@$(PY) -m mypy hil
	@echo "functions above complexity 10 (ruff C901): $$($(PY) -m ruff check gateway protocols hil --select C901 --exit-zero --output-format concise | grep -c C901)"

clean:
	rm -rf $(VENV) build *.egg-info .run native/_stima_native*.so native/_stima_native.c

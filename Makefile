# The image mesh. Quick start: `make run` (install, then the whole stack in the foreground), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install python-check run up down ps test lint browser unit chaos bench bench-large clean

install: $(STAMP)

# The venv's Python when there is one (that is what pip runs), else $(PYTHON): it must be 3.11 (pyproject's
# requires-python), or pip fails deep inside the install with a message that does not say so.
CHECKED_PYTHON = $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
python-check:  ## stop with a clear message when the interpreter is not Python 3.11
	@v=$$($(CHECKED_PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || v=""; \
	if [ "$$v" != "3.11" ]; then \
	  echo "The mesh needs Python 3.11, but $(CHECKED_PYTHON) is $${v:+Python }$${v:-not a working Python}." >&2; \
	  if [ "$(CHECKED_PYTHON)" = "$(BIN)/python" ]; then \
	    echo "  $(VENV) was made with it: remove it (rm -rf $(VENV)) and make it again with Python 3.11:" >&2; fi; \
	  if command -v python3.11 >/dev/null 2>&1; then \
	    echo "  python3.11 is installed: PYTHON=python3.11 make $(or $(MAKECMDGOALS),install)" >&2; \
	  else \
	    echo "  install it, e.g. with pyenv: pyenv install 3.11 && pyenv local 3.11 (or your system's python3.11 package)," >&2; \
	    echo "  then: PYTHON=/path/to/python3.11 make $(or $(MAKECMDGOALS),install)" >&2; fi; \
	  exit 1; fi

$(STAMP): pyproject.toml | python-check
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[servers,models,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: install  ## the whole stack in the foreground; Ctrl-C stops it
	$(BIN)/python -m ops.stack run

up: install  ## the whole stack in the background; returns once every service is healthy
	$(BIN)/python -m ops.stack up

down:  ## stop the background stack
	@test -x $(BIN)/python && $(BIN)/python -m ops.stack down || true

ps:  ## each service and its health (non-zero if any is unhealthy)
	$(BIN)/python -m ops.stack ps

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

browser:  ## Debian's Chromium for the web page's browser test (Playwright drives it; no browser download)
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser test" >&2; exit 1; fi; }

test: lint browser  ## gates, then every test (unit, integration, e2e, reduced chaos and bench)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

chaos: install  ## the full-size fault-injection suite
	MESH_CHAOS_FULL=1 $(BIN)/python -m pytest tests/chaos tests/temporal/test_faults.py -m "slow or not slow" $(PYTEST_ARGS)

bench: install  ## benchmarks against same-run baselines; writes docs/BENCHMARKS.md and var/bench/summary.json
	$(BIN)/python -m ops.bench

bench-large: install
	$(BIN)/python -m ops.bench --large

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

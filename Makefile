# skymosaic: two commands on a fresh clone (see README.md):
#   make demo   install into .venv and mosaic a synthetic survey with a known truth
#   make test   install with the test extras, lint (ruff) and run the test suite
#   make solver install astrometry.net + index files for plate solving (apt; no-op if present)
#   make browser install headless Chromium + chromedriver for the report's browser tests
#   make peers  install SWarp + Montage, the peers the benchmarks compare with (apt)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
OUT    ?= demo_out
PYTEST_ARGS ?=
SOLVER_PACKAGES ?=

.PHONY: demo test bench lint clean install install-test solver browser peers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[test,dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/skymosaic demo -o $(OUT)

# Plate solver for frames without WCS (scripts/install_solver.sh: apt-get, never fails the
# build; SKYMOSAIC_NO_SOLVER=1 skips the install; tests needing a solver skip without one).
solver:
	@SOLVER_PACKAGES="$(SOLVER_PACKAGES)" bash scripts/install_solver.sh

# Headless Chromium + chromedriver for tests/test_report_browser.py (scripts/install_browser.sh:
# apt-get, never fails the build; SKYMOSAIC_NO_BROWSER=1 skips it; the browser tests skip without).
browser:
	@bash scripts/install_browser.sh

# SWarp + Montage for the benchmarks' peer rows (scripts/install_peers.sh: apt-get, never
# fails the build; SKYMOSAIC_NO_PEERS=1 skips it; the benchmarks skip a missing tool).
peers:
	@bash scripts/install_peers.sh

test: solver browser $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# bench_end_to_end.py runs with E2E_ARGS (its own default, 30/80/200 frames mono and colour,
# takes over an hour on 2 cores)
E2E_ARGS ?= --frames 30,80 --mono
bench: peers $(VENV)/.installed-test
	@set -e; for b in $(filter-out benchmarks/bench_scale.py benchmarks/bench_end_to_end.py,$(wildcard benchmarks/bench_*.py)); do \
		echo "== $$b"; $(BIN)/python $$b; done
	@echo "== benchmarks/bench_end_to_end.py $(E2E_ARGS)"; $(BIN)/python benchmarks/bench_end_to_end.py $(E2E_ARGS)
	@echo "(bench_scale.py: 1000 raw frames, ~40 min and 4 GB of disk; run it by hand)"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) $(OUT) build dist src/*.egg-info .pytest_cache

# Two commands: `make reproduce` (run the notebook series) and `make test` (unit tests + nbval).
# Both create .venv and install the project when it is missing.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= demo

.PHONY: reproduce test unit nbval notebooks bench clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,export]'
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/python -m protoad_lib.run --profile $(PROFILE)

test: unit nbval

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The notebooks write their tables and figures into a temporary folder here, so `make test` leaves
# the working tree as it found it (the committed results/demo/ are written by `make notebooks`).
nbval: $(STAMP)
	scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	PROTOAD_RESULTS_DIR="$$scratch/demo" $(BIN)/python -m pytest -q --nbval notebooks \
		--nbval-sanitize-with tests/nbval_sanitize.cfg

notebooks: $(STAMP)
	$(BIN)/python -m protoad_lib.run --profile demo --update-notebooks

bench: $(STAMP)
	$(BIN)/protoad bench --backbone efficientnet_lite0 --json results/demo/bench.json

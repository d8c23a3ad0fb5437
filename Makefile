# Two commands: `make reproduce` (run the notebook series) and `make test` (unit tests + nbval).
# Both create .venv and install the project when it is missing.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= demo
# Optional knobs of `make reproduce` (empty: the profile's defaults), e.g.
#   make reproduce PROFILE=paper CATEGORIES=bottle,screw BACKBONE=wide_resnet50_2 DEVICE=cuda DATA_ROOT=/data/mvtec
# RESULTS_DIR moves every table, figure, executed notebook and HTML page; REDO=1 recomputes what an
# interrupted run stored (by default a rerun resumes); SMOKE=1 uses the smallest settings (a code-path check);
# PRN_EPOCHS=3 shortens PRN's training (the schedule's 30 epochs take hours per category on a CPU).
# WORKERS=N spreads the categories over a Dask LocalCluster of N worker processes (one thread each, the machine's
# memory shared equally); SCHEDULER=tcp://host:8786 (or a scheduler file) over an existing Dask cluster (README).
CATEGORIES ?=
BACKBONE ?=
DEVICE ?=
DATA_ROOT ?=
RESULTS_DIR ?=
REDO ?=
SMOKE ?=
PRN_EPOCHS ?=
WORKERS ?=
SCHEDULER ?=
RUN_OPTIONS = $(if $(CATEGORIES),--param categories=$(CATEGORIES)) $(if $(BACKBONE),--param backbone=$(BACKBONE)) \
	$(if $(DEVICE),--param device=$(DEVICE)) $(if $(DATA_ROOT),--param data_root=$(DATA_ROOT)) \
	$(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR)) $(if $(REDO),--param redo=True) $(if $(SMOKE),--param smoke=True) \
	$(if $(PRN_EPOCHS),--param prn_epochs=$(PRN_EPOCHS)) $(if $(WORKERS),--workers $(WORKERS)) \
	$(if $(SCHEDULER),--scheduler $(SCHEDULER))

.PHONY: reproduce test unit nbval notebooks bench bench-peers lab

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,export]'
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/python -m protoad_lib.run --profile $(PROFILE) $(RUN_OPTIONS)

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
	$(BIN)/python -m protoad_lib.report.readme_tables

# JupyterLab on notebooks/ with the project's environment as the kernel. LAB_ARGS go to `jupyter lab`, e.g.
#   make lab LAB_ARGS="--no-browser --port 8890"
# As root (a container), JupyterLab refuses to start unless told: make lab LAB_ARGS="--allow-root --ip 0.0.0.0"
LAB_ARGS ?=
lab: $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name protoad --display-name "ProtoAD (.venv)" >/dev/null
	$(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

bench: $(STAMP)
	$(BIN)/protoad bench --backbone efficientnet_lite0 --json results/demo/bench.json

# anomalib's PatchCore and PaDiM beside ours: the `peers` extra in its own environment (.venv-peers), its
# adapter tests, then the benchmark with the anomalib rows and the fit-time growth curve.
PEERS := .venv-peers
$(PEERS)/.installed: pyproject.toml
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet -e '.[dev,peers]'
	touch $@

bench-peers: $(PEERS)/.installed
	$(PEERS)/bin/python -m pytest -q tests/test_anomalib_adapter.py
	$(PEERS)/bin/protoad bench --backbone efficientnet_lite0 --fit-counts 25 50 100 200 --n-images 200 \
		--json results/benchmarks/bench_peers_efficientnet_lite0_cpu.json

# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_ARGS ?=
CONFIG ?= configs/toy.yaml

.PHONY: install run run-inprocess test test-fast lint compile pretrain bench experiment-toy clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[kfp,dev,dreamsim,experiment]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## train the toy world for 10 rounds through the Kubeflow pipeline (kfp.local)
	$(BIN)/dgrpo run --config $(CONFIG) $(RUN_ARGS)

run-inprocess: $(STAMP)
	$(BIN)/dgrpo run --config $(CONFIG) --engine inprocess $(RUN_ARGS)

test: $(STAMP)  ## lint, unit tests and the end-to-end pipeline test
	$(BIN)/ruff check src components pipelines tests scripts
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not e2e"

lint: $(STAMP)
	$(BIN)/ruff check src components pipelines tests scripts

compile: $(STAMP)  ## write the KFP IR YAML of the pipeline
	$(BIN)/dgrpo compile --config $(CONFIG) --output build/pipeline.yaml

pretrain: $(STAMP)  ## re-train the shipped toy checkpoint (a few CPU minutes)
	$(BIN)/python -m dgrpo.toyworld.pretrain

experiment-toy: $(STAMP)  ## Flow-GRPO vs SA-Reg vs DiverseGRPO (+ beta sweep) on the toy world: table + plot
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/dgrpo experiment --output outputs/experiment-toy $(EXPERIMENT_ARGS)

bench: $(STAMP)
	$(BIN)/python scripts/bench_rollout.py

clean:
	rm -rf outputs build .pytest_cache

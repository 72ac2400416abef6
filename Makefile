# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_ARGS ?=
CONFIG ?= src/dgrpo/assets/configs/toy.yaml
LINT_VENV ?= .venv-lint
LINT_STAMP := $(LINT_VENV)/.installed-stamp
# The MLflow tracking server tests/test_tracking.py starts: the full mlflow, whose pins differ from the project's.
MLFLOW_VENV ?= .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed-stamp
K8S_VERSION ?= 1.32.0
CHECKOV := $(LINT_VENV)/bin/checkov --quiet --compact --skip-download
IMAGES_FILE ?= build/images.json
# Applied by hand, not by kustomize: the Secret templates and the one-off model-cache fill Job.
MANIFEST_EXTRAS := manifests/s3-credentials.secret.yaml manifests/hf-token.secret.yaml manifests/model-cache-fill.job.yaml
# The suite's processes: its slow tests wait on one-thread subprocesses (kfp.local tasks), so two keep 2 cores busy.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

.PHONY: help install run run-fused run-inprocess test test-fast test-images lint lint-images lint-manifests images compile pretrain bench experiment-toy clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 20

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[kfp,dev,dreamsim,experiment,mlflow]"
	touch $(STAMP)

$(MLFLOW_STAMP): requirements-mlflow-server.txt
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-mlflow-server.txt
	touch $(MLFLOW_STAMP)

install: $(STAMP)  ## create .venv with the project and its extras

$(LINT_STAMP): requirements-lint.txt
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-lint.txt
	touch $(LINT_STAMP)

run: $(STAMP)  ## train the toy world for 10 rounds through the Kubeflow pipeline (kfp.local), as 2 segments
	$(BIN)/dgrpo run --config $(CONFIG) $(RUN_ARGS)

run-fused: $(STAMP)  ## the same training with each segment's rounds in one kfp.local task (pipeline.execution fused)
	$(BIN)/dgrpo run --config $(CONFIG) --set pipeline.execution=fused $(RUN_ARGS)

run-inprocess: $(STAMP)  ## the same training in one process, without kfp (faster)
	$(BIN)/dgrpo run --config $(CONFIG) --engine inprocess $(RUN_ARGS)

test: $(STAMP) $(MLFLOW_STAMP) lint lint-images lint-manifests  ## lint, unit tests and the end-to-end pipeline tests
	$(PYTEST)

test-fast: $(STAMP)  ## the tests without the end-to-end pipeline runs
	$(PYTEST) -m "not e2e and not images"

test-images: $(STAMP)  ## build each stage image's environment as a venv (build/image-envs) and run the pipeline in them
	$(BIN)/pytest -q -m images tests/test_stage_images.py

lint: $(STAMP)  ## ruff, and the import layering with import-linter (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check src components pipelines tests scripts examples lab
	$(BIN)/lint-imports

lint-images: $(STAMP) $(LINT_STAMP)  ## hadolint and checkov on every Dockerfile under images/
	$(BIN)/hadolint images/*/Dockerfile
	$(CHECKOV) --framework dockerfile -d images

lint-manifests: $(STAMP) $(LINT_STAMP)  ## render manifests/, validate against the Kubernetes schemas, checkov
	$(BIN)/python scripts/render_manifests.py manifests build/manifests.yaml
	$(BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) build/manifests.yaml $(MANIFEST_EXTRAS)
	$(CHECKOV) --framework kubernetes -f build/manifests.yaml $(addprefix -f ,$(MANIFEST_EXTRAS))

images: $(STAMP)  ## build and push the base, stage and control images (fails without a Docker engine), write $(IMAGES_FILE)
	$(BIN)/python scripts/images.py --output $(IMAGES_FILE)

compile: $(STAMP)  ## write the KFP IR YAML of the pipeline (with the images of `make images` when built)
	$(if $(wildcard $(IMAGES_FILE)),DGRPO_IMAGES_FILE=$(IMAGES_FILE)) $(BIN)/dgrpo compile --config $(CONFIG) --output build/pipeline.yaml

pretrain: $(STAMP)  ## re-train the shipped toy checkpoint (a few CPU minutes)
	$(BIN)/python -m dgrpo.toyworld.pretrain

experiment-toy: $(STAMP)  ## Flow-GRPO vs SA-Reg, bonus alone, DiverseGRPO x the 3 tuning seeds on the toy world (EXPERIMENT_ARGS="--seeds evaluation": the 5 seeds that decide the goals; --all-arms adds the paper's DiverseGRPO, DRIFT, Pro-GRPO, GARDO)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/dgrpo experiment --output outputs/experiment-toy $(EXPERIMENT_ARGS)

bench: $(STAMP)  ## benchmarks: ratios measured side by side in one run
	$(BIN)/python scripts/bench_round.py
	$(BIN)/python scripts/bench_rollout.py
	$(BIN)/python scripts/bench_prune.py
	$(BIN)/python scripts/bench_compile.py

clean:  ## remove outputs/ and build/
	rm -rf outputs build .pytest_cache

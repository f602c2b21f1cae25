# Ossa: `make run` starts the service, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The base install serves (ONNX Runtime); the [train] extra (PyTorch) trains and exports.
STAMP := $(VENV)/.installed-stamp
TRAIN_STAMP := $(VENV)/.train-installed-stamp
CONFIG ?= config.toml
DEMO_BUNDLE := var/models/demo
PHANTOM := var/phantom
# The shipped real model: FracAtlas (CC BY 4.0), a development copy or your own download.
FRACATLAS ?= ../shared/data/fracatlas
REAL_DATA := var/fracatlas-ds
REAL_BUNDLE := bundles/fracatlas
REAL_TRAIN := $(BIN)/ossa train --data $(REAL_DATA) --out var/models/fracatlas --preset real --seed 0 --name fracatlas --workers 2
# Debian packages the integration tests drive as real peers.
TEST_DEBS := dcmtk orthanc orthanc-dicomweb dicom3tools openjph-tools chromium chromium-driver postgresql faketime
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test install install-train demo-bundle real-model test-deps lint bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TRAIN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,test]'
	touch $(STAMP) $@

install: $(STAMP)

install-train: $(TRAIN_STAMP)

# Built once, atomically: an interrupted build leaves no half bundle behind. Training needs
# the [train] extra; serving the bundle afterwards does not.
$(DEMO_BUNDLE)/manifest.json: | $(TRAIN_STAMP)
	$(BIN)/ossa phantom --out $(PHANTOM) --studies 80 --seed 0 --overwrite
	rm -rf $(DEMO_BUNDLE).partial
	$(BIN)/ossa train --data $(PHANTOM) --out $(DEMO_BUNDLE).partial --preset demo --seed 0 --name demo
	rm -rf $(DEMO_BUNDLE) && mv $(DEMO_BUNDLE).partial $(DEMO_BUNDLE)

demo-bundle: $(DEMO_BUNDLE)/manifest.json

# Reproduces bundles/fracatlas (about 1.5 hours on 2 CPU cores): import (with the fracture
# boxes), train, keep the ONNX networks only, evaluate on valid, write the model card. Run it
# in the background with a log (`nohup make real-model > var/real-model.log 2>&1 &`); after a
# kill or a reboot the same command resumes from the last finished epoch (`--resume`).
real-model: $(TRAIN_STAMP)
	rm -rf $(REAL_DATA) && $(BIN)/ossa data import-fracatlas $(FRACATLAS) $(REAL_DATA) --seed 0
	$(REAL_TRAIN) --resume --overwrite
	rm -rf $(REAL_BUNDLE).new && $(BIN)/ossa bundle serving-copy var/models/fracatlas $(REAL_BUNDLE).new
	rm -rf var/reports/fracatlas && $(BIN)/ossa evaluate --data $(REAL_DATA) --bundle $(REAL_BUNDLE).new \
	    --out var/reports/fracatlas --data-description "FracAtlas development copy, valid split (20%)"
	$(BIN)/python -m models.evaluation.model_card $(REAL_BUNDLE).new var/reports/fracatlas \
	    --data-readme $(FRACATLAS)/README.md --command "make real-model  # $(REAL_TRAIN)"
	rm -rf $(REAL_BUNDLE) && mv $(REAL_BUNDLE).new $(REAL_BUNDLE)

# Serves the shipped model (bundles/fracatlas, ONNX Runtime): the base install only.
run: $(STAMP)
	$(BIN)/ossa serve --config $(CONFIG)

test-deps:
	@missing=""; for p in $(TEST_DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: $(TRAIN_STAMP) test-deps
	$(BIN)/python -m pytest

# Long variants of the reliability tests (issue 12): more kill -9 iterations, a longer fuzz
# run, a heavier load. `make test` runs the same tests, bounded in time.
soak: $(TRAIN_STAMP) test-deps
	OSSA_SOAK=1 $(BIN)/python -m pytest tests/test_hostile.py tests/test_fuzz.py \
	  tests/test_faults.py tests/test_load.py

# Benchmarks (issue 11; bench/README.md): ingest, inference, end to end and scaling, under
# 20 minutes on 2 CPU cores. Figures, plots and the table land in bench/results/; generated
# DICOM files are kept in var/bench/. `make bench BENCH_ARGS=--quick`: seconds, not figures.
bench: $(TRAIN_STAMP) test-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(TRAIN_STAMP)
	$(BIN)/ruff check worker dicom_io models tests bench harness
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

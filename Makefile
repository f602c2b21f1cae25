# Ossa: `make run` starts the service, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= config.toml
DEMO_BUNDLE := var/models/demo
PHANTOM := var/phantom
# Debian packages the integration tests drive as real peers.
TEST_DEBS := dcmtk orthanc orthanc-dicomweb dicom3tools
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test install demo-bundle test-deps lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

# Built once, atomically: an interrupted build leaves no half bundle behind.
$(DEMO_BUNDLE)/manifest.json: | $(STAMP)
	$(BIN)/ossa phantom --out $(PHANTOM) --studies 80 --seed 0 --overwrite
	rm -rf $(DEMO_BUNDLE).partial
	$(BIN)/ossa train --data $(PHANTOM) --out $(DEMO_BUNDLE).partial --preset demo --seed 0 --name demo
	rm -rf $(DEMO_BUNDLE) && mv $(DEMO_BUNDLE).partial $(DEMO_BUNDLE)

demo-bundle: $(DEMO_BUNDLE)/manifest.json

run: $(STAMP) $(DEMO_BUNDLE)/manifest.json
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

test: $(STAMP) test-deps
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check worker dicom_io models tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

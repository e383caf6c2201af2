# Set-up and everyday commands. `make run` serves; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

# `make image`: the container image, with podman (or docker); docs/kubernetes.md.
IMAGE      ?= localhost/dlaas:latest
BASE_IMAGE ?= python:3.11-slim

.PHONY: run test test-containers image lint typecheck bench clean venv venv-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The runtime install: no test tools, and never torch.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

venv-test: $(VENV)/.installed-test

run: $(VENV)/.installed
	$(BIN)/dlaas model build
	$(BIN)/dlaas serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

# Most end-to-end tests wait on processes and servers, so two test processes finish the
# suite in two thirds of the time on a 2-core machine (10.5 against 15.8 min). A module
# always runs whole in one process (--dist loadfile); `make test TEST_PROCESSES=0` runs
# the suite in one.
TEST_PROCESSES ?= 2

test: $(VENV)/.installed-test lint typecheck
	$(BIN)/python -m pytest -m "not containers" -n $(TEST_PROCESSES) --dist loadfile

# The image and deploy/k8s as pods; needs podman (CI installs it). Slower than the rest
# (the images are built from nothing in a fresh clone), so `make test` leaves them out
# and .ci/run runs this target after it.
test-containers: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m containers tests/deploy

# Falls back to a base made from Debian's packages when BASE_IMAGE cannot be pulled.
image:
	$(PYTHON) deploy/container/build.py image --tag $(IMAGE) --base-image $(BASE_IMAGE)

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-test
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/model.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) .dlaas .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info

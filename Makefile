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

test: $(VENV)/.installed-test lint typecheck
	$(BIN)/python -m pytest

# The image and deploy/k8s as pods (part of `make test` too); needs podman.
test-containers: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/deploy/test_pods.py tests/queue/test_redis_keda.py

# Falls back to a base made from Debian's packages when BASE_IMAGE cannot be pulled.
image:
	$(PYTHON) deploy/container/build.py image --tag $(IMAGE) --base-image $(BASE_IMAGE)

bench: $(VENV)/.installed-test
	$(BIN)/python bench/model.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) .dlaas .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info

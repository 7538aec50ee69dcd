# Every target installs the virtual environment first if it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
STORAGE ?= sqlite:///runs/optuna.db
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install data test lint train emhcm exp-multihead-cnn-mnist ecm exp-cnn-mnist

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,postgres]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project (editable) with torch 2.14.1

data: $(STAMP) ## acquire and verify MNIST into $$MHTRAIN_DATA_DIR (default ./data)
	$(PY) -m mhtrain.data

test: $(STAMP) ## run the test suite
	$(PY) -m pytest $(ARGS)

lint: $(STAMP) ## ruff
	$(PY) -m ruff check mhtrain studies tests bench

train: $(STAMP) ## train the default configuration; extra Hydra overrides in ARGS="..."
	$(PY) -m mhtrain.train $(ARGS)

emhcm exp-multihead-cnn-mnist: $(STAMP) ## the multihead CNN on MNIST, 10 epochs
	$(PY) -m mhtrain.train experiment=multihead_cnn_mnist $(ARGS)

ecm exp-cnn-mnist: $(STAMP) ## the digit-only baseline CNN on MNIST, 10 epochs
	$(PY) -m mhtrain.train experiment=cnn_mnist tags="[single_task,digit]" $(ARGS)

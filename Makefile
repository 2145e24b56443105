# The two commands of the README. Both create .venv on first use (and refresh it when
# pyproject.toml changes). Pass extra arguments with ARGS="...", optional extras with
# EXTRAS=dev,fid (CI does, to run the FID tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: train test lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	touch $@

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check vae_lightning tests train.py sample.py

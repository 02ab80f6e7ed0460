# dasslab — the two commands: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: help install test test-fast demo bench lint clean reproduce-table1 reproduce-table2a

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,slurm]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install dasslab with its dev tools

# Tests use tiny tensors: one intra-op thread avoids oversubscribing a small CPU (several times faster here).
test: $(STAMP)  ## run the test suite (CPU, a few minutes)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -x --timeout=900 tests $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the tests not marked slow
	$(PY) -m pytest -q -m "not slow" tests $(PYTEST_ARGS)

demo: $(STAMP)  ## the pipeline on the built-in digits benchmark: source only, oracle, baseline (ARGS='…' adds overrides)
	$(VENV)/bin/dasslab-train stage=pipeline experiment=demo $(ARGS)

bench: $(STAMP)  ## speed benchmarks (DEVICE=cpu|cuda), JSON per benchmark + PTL projection in benchmarks/results/
	$(PY) benchmarks/run_all.py --device $(or $(DEVICE),cpu) $(BENCH_ARGS)

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check dasslab tests benchmarks

reproduce-table1: $(STAMP)  ## Table 1 source-only rows (needs the datasets under data/ or DASSLAB_DATA)
	$(VENV)/bin/dasslab-train -m stage=pipeline pipeline.rows=[source_only] \
	  experiment=table1_source_only backbone=deeplabv2_r101,fcn8s_vgg16,daformer_mitb5 \
	  dataset=gta5_cityscapes,synthia_cityscapes $(ARGS)

reproduce-table2a: $(STAMP)  ## Table 2 (a): phi^N translation baseline on GTA5 -> Cityscapes
	$(VENV)/bin/dasslab-train stage=pipeline experiment=table2a_baseline $(ARGS)

clean:  ## remove the venv and caches (not outputs/ or data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache

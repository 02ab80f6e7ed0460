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

.PHONY: help install test test-fast demo bench lint clean reproduce-table1 reproduce-table2 reproduce-table3 \
	reproduce-table4 reproduce-table5 reproduce-table6 reproduce-fig5 slurm-test

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,slurm,optuna]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install dasslab with its dev tools, Slurm and Optuna extras

# Tests use tiny tensors: one intra-op thread avoids oversubscribing a small CPU (several times faster here).
# TEST_WORKERS test files run side by side (pytest-xdist, one file per worker: a file's fixtures are built once);
# 2 on the 2-core CPU: ~15 min (17 min 46 s measured while two other suites shared the cores). TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: $(STAMP)  ## run the test suite (CPU; ~15 min on 2 cores, a real single-node Slurm included where it installs)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -x --timeout=900 -n $(TEST_WORKERS) --dist loadfile \
		tests $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the tests not marked slow
	$(PY) -m pytest -q -m "not slow" tests $(PYTEST_ARGS)

slurm-test: $(STAMP)  ## only the Slurm tests: a local Slurm (root; installed if missing), an experiment of 2 dependent jobs, DDP
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -rs tests/test_slurm.py $(PYTEST_ARGS)

demo: $(STAMP)  ## the whole method on the built-in digits benchmark: source only, oracle, baseline, full (ARGS=…)
	$(VENV)/bin/dasslab-train stage=pipeline experiment=demo $(ARGS)

bench: $(STAMP)  ## speed benchmarks (DEVICE=cpu|cuda), JSON per benchmark + PTL projection in benchmarks/results/
	$(PY) benchmarks/run_all.py --device $(or $(DEVICE),cpu) $(BENCH_ARGS)

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check dasslab tests benchmarks

# The paper's tables: exactly the runs each needs, shared stages once (dasslab/workflow/reproduce.py).
# LAUNCHER=auto (default: slurm where sbatch is on PATH, else local) | slurm (every job its own Slurm job,
# afterok on what it needs; returns at once) | local (here, one experiment after the other);
# DRY_RUN=1 prints the plan and checks the data; SEEDS=5 repeats the adaptation runs; ARGS='dataset.source.root=… dataset.target.root=…'.
LAUNCHER ?= auto
REPRODUCE = $(VENV)/bin/dasslab-reproduce launcher=$(LAUNCHER) $(if $(SEEDS),seeds=$(SEEDS)) \
	$(if $(filter-out 0,$(DRY_RUN)),dry_run=true)
reproduce-table1: $(STAMP)  ## Table 1: source only and SGG + PTL, 3 backbones x GTA5/SYNTHIA (LAUNCHER DRY_RUN SEEDS ARGS)
	$(REPRODUCE) table=table1 $(ARGS)

reproduce-table2: $(STAMP)  ## Table 2: the ablations (a)-(f) (LAUNCHER DRY_RUN SEEDS ARGS)
	$(REPRODUCE) table=table2 $(ARGS)

reproduce-table3: $(STAMP)  ## Table 3: L_ada alone vs L_ada + L_src (LAUNCHER DRY_RUN SEEDS ARGS)
	$(REPRODUCE) table=table3 $(ARGS)

reproduce-table4:  ## Table 4: no runs are defined for it in dasslab
	@echo "Table 4: no runs are defined for it in dasslab (see docs/reference.md, Reproducing the paper)"

reproduce-table5: $(STAMP)  ## Table 5: the LCG/GSG arrangements (LAUNCHER DRY_RUN SEEDS ARGS)
	$(REPRODUCE) table=table5 $(ARGS)

reproduce-table6: $(STAMP)  ## Table 6: the guide without / with the Appendix C augmentation (LAUNCHER DRY_RUN SEEDS ARGS)
	$(REPRODUCE) table=table6 $(ARGS)

# Fig. 5: two sweeps of the full method, each one folder (outputs/table2f_full/<time>/0..3); the source model and
# the DDPM are trained once and reused by every N and lambda. LAUNCHER=slurm submits every job to Slurm.
FIG5 = $(VENV)/bin/dasslab-train -m experiment=table2f_full $(if $(filter slurm,$(LAUNCHER)),hydra/launcher=slurm)
reproduce-fig5: $(STAMP)  ## Fig. 5: sweeps over N and lambda of the full method (Hydra multirun; LAUNCHER ARGS)
	$(FIG5) 'ptl.N=100,200,400,600' $(ARGS)
	$(FIG5) guidance.calibrate=false 'guidance.scale=20,40,80,160' $(ARGS)

clean:  ## remove the venv and caches (not outputs/ or data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache

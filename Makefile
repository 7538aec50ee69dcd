# Every target installs the virtual environment first if it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
STORAGE ?= sqlite:///runs/optuna.db
ARGS ?=

.DEFAULT_GOAL := help
# The quick fidelity of the make study targets: 3 epochs on a 10k-image training subset.
QUICK ?= trainer.max_epochs=3 data.train_subset=10000
WORKERS ?= 1
# CONFIRM=K: after the search, re-train the top K with fresh seeds on the validation split (--confirm)
CONFIRM ?=
CONFIRMING = $(if $(CONFIRM),--confirm $(CONFIRM))

.PHONY: help install lock lock-check data test test-all lint train emhcm exp-multihead-cnn-mnist ecm exp-cnn-mnist \
	emhcc10 exp-multihead-cnn-cifar10 \
	study-lr study-loss-weights study-baselines study-pbt compare compare-weighting data-efficiency dashboard \
	tensorboard mlflow docs

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_ -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-36s %s\n", $$1, $$2}'

# requirements.lock pins every package (torch 2.14.1, optuna 5.0.0, ...): a study's answer
# depends on the sampler's version. `make lock` re-pins after pyproject.toml changes.
LOCK := requirements.lock
PIP_COMPILE = $(VENV)/bin/pip-compile --quiet --extra dev --extra postgres --extra mlflow --extra docs --strip-extras \
	--no-emit-index-url --no-emit-find-links pyproject.toml

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the locked versions, the project editable

lock: $(STAMP) ## re-pin requirements.lock to pyproject.toml (keeps every pin it can)
	$(PIP_COMPILE) --output-file $(LOCK)
	touch $(STAMP)

lock-check: $(STAMP) ## fail when requirements.lock no longer matches pyproject.toml
	cp $(LOCK) $(VENV)/lock-check.txt
	$(PIP_COMPILE) --output-file $(VENV)/lock-check.txt
	diff -I '^#' $(LOCK) $(VENV)/lock-check.txt || { echo "requirements.lock is stale: run make lock"; exit 1; }

data: $(STAMP) ## acquire and verify MNIST into MHTRAIN_DATA_DIR (default ./data)
	$(PY) -m mhtrain.data

test: $(STAMP) ## the fast tier: every module in-process on tiny data (a few minutes)
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: $(STAMP) ## everything: killed processes, workers, PostgreSQL, Chromium, bad-input battery
	$(PY) -m pytest $(ARGS)

lint: $(STAMP) ## ruff
	$(PY) -m ruff check mhtrain studies tests bench

# docs: the site from docs/ (mkdocs.yml; the layout and API pages generated from the tree by
# docs/hooks.py) into site/, strict: a broken link, a missing page or a docstring warning fails
docs: $(STAMP) ## build the docs site into site/ (mkdocs build --strict)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# gpu-check: one command on a GPU machine that has torch, Lightning and pytest but no network
# (no venv: its python3; .device/setup.sh, when carried, installs the missing wheels and MNIST)
GPU_PY ?= python3
.PHONY: gpu-check
gpu-check: ## on one GPU, offline: the GPU tests on CUDA, then bench/gpu.py's table (<= 10 min on an H100/H200)
	@if [ -f .device/setup.sh ]; then . ./.device/setup.sh || exit 1; fi; \
	$(GPU_PY) -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu-check: no CUDA GPU here")' && \
	$(GPU_PY) -m pytest -q -p no:cacheprovider tests/test_gpu_path.py && \
	$(GPU_PY) bench/gpu.py

# bench-peers: the same searches in mhtrain, Optuna's Lightning example, Ray Tune and the seed repo's
# Hydra sweeper, then PBT against Ray's; Optuna's example in .venv, Ray and the seed in venvs of their own
# under PEERS_DIR, installed from pinned versions first (bench/peers_setup.py). ARGS=--quick: minutes;
# without it, hours on 2 cores
PEERS_DIR ?= $(HOME)/.cache/mhtrain-peers
.PHONY: bench-peers
bench-peers: data ## mhtrain vs Ray Tune, Optuna's Lightning example, the seed's sweeper (bench/peers.py)
	MHTRAIN_PEERS_DIR=$(PEERS_DIR) $(PY) bench/peers.py --setup
	MHTRAIN_PEERS_DIR=$(PEERS_DIR) $(PY) bench/peers.py $(ARGS)

train: $(STAMP) ## train the default configuration; extra Hydra overrides in ARGS="..."
	$(PY) -m mhtrain.train $(ARGS)

emhcm exp-multihead-cnn-mnist: $(STAMP) ## the multihead CNN on MNIST, 10 epochs
	$(PY) -m mhtrain.train experiment=multihead_cnn_mnist $(ARGS)

ecm exp-cnn-mnist: $(STAMP) ## the digit-only baseline CNN on MNIST, 10 epochs
	$(PY) -m mhtrain.train experiment=cnn_mnist tags="[single_task,digit]" $(ARGS)

emhcc10 exp-multihead-cnn-cifar10: $(STAMP) ## the multihead CNN on CIFAR-10, 10 epochs
	$(PY) -m mhtrain.train experiment=multihead_cnn_cifar10 $(ARGS)

study-lr: data ## quick learning-rate study of the multihead CNN (20 trials, QUICK fidelity)
	$(PY) studies/lr.py --n-trials 20 --storage $(STORAGE) --workers $(WORKERS) $(CONFIRMING) $(QUICK) $(ARGS)

study-loss-weights: data ## learning rate + loss weights of the multihead CNN (30 trials, QUICK)
	$(PY) studies/loss_weights.py --n-trials 30 --storage $(STORAGE) --workers $(WORKERS) $(CONFIRMING) $(QUICK) $(ARGS)

study-baselines: data ## the digit-only baseline over the same lr range (20 trials, QUICK)
	$(PY) studies/baselines.py --n-trials 20 --storage $(STORAGE) --workers $(WORKERS) $(CONFIRMING) $(QUICK) $(ARGS)

study-pbt: data ## population-based training of lr + loss weights (4 members stacked, QUICK)
	$(PY) studies/pbt_loss_weights.py --n-trials 4 --storage $(STORAGE) --workers $(WORKERS) $(CONFIRMING) $(QUICK) $(ARGS)

compare: $(STAMP) ## re-train the best of study-lr and study-baselines (5 seeds), write the report
	$(PY) studies/compare.py --multitask lr --baseline baseline_lr --storage $(STORAGE) $(ARGS)

# compare-weighting: each arm searched at QUICK, its best re-trained at RERUN for SEEDS seeds
WEIGHTING_TRIALS ?= 20
LOSS_WEIGHTS_TRIALS ?= 30
SEEDS ?= 5
RERUN ?= trainer.max_epochs=10 data.train_subset=null
WEIGHTING_ARMS := loss_weights equal_lr uncertainty_lr baseline_lr

compare-weighting: data ## searched, equal and learned loss weights vs digit-only (QUICK studies, RERUN re-runs)
	for arm in equal_lr uncertainty_lr baseline_lr; do \
		$(PY) -m mhtrain.study run $$arm --n-trials $(WEIGHTING_TRIALS) --storage $(STORAGE) \
			--workers $(WORKERS) $(QUICK) || exit 1; \
	done
	$(PY) -m mhtrain.study run loss_weights --n-trials $(LOSS_WEIGHTS_TRIALS) --storage $(STORAGE) \
		--workers $(WORKERS) $(QUICK)
	$(PY) studies/compare.py --arms $(WEIGHTING_ARMS) --reference baseline_lr --seeds $(SEEDS) \
		--pair loss_weights:equal_lr --storage $(STORAGE) --name weighting $(RERUN)

# compare-mtl: the field's multi-task methods (model.weighting=upgrad, pcgrad, dwa, rlw) as arms beside
# digit-only and the searched loss weights, one family (`mtl`) in a storage of its own. Every arm is
# searched at QUICK with MTL_TRIALS trials per parameter its study config searches (1 for
# baseline_lr and the methods but dwa_lr's 2, loss_weights' 3), its best re-trained at RERUN for
# SEEDS seeds; each method is also paired with loss_weights. The methods train solo (a population
# trains fixed weights only); upgrad and pcgrad take one backward row per head.
MTL_TRIALS ?= 12
MTL_STORAGE ?= sqlite:///runs/mtl.db
MTL_METHODS := upgrad_lr pcgrad_lr dwa_lr rlw_lr
MTL_ARMS := baseline_lr loss_weights $(MTL_METHODS)
.PHONY: compare-mtl

compare-mtl: data ## UPGrad, PCGrad, DWA and RLW vs digit-only and searched weights, one family (QUICK studies, RERUN re-runs)
	for arm in $(MTL_ARMS); do \
		keys=$$($(PY) -c "import sys, yaml; print(len(yaml.safe_load(open(sys.argv[1]))['search_space']))" \
			conf/study/$$arm.yaml) || exit 1; \
		$(PY) -m mhtrain.study run $$arm --n-trials $$(( $(MTL_TRIALS) * keys )) --storage $(MTL_STORAGE) \
			--workers $(WORKERS) $(QUICK) || exit 1; \
	done
	$(PY) studies/compare.py --arms $(MTL_ARMS) --reference baseline_lr --seeds $(SEEDS) \
		$(foreach m,$(MTL_METHODS),--pair $(m):loss_weights) --storage $(MTL_STORAGE) --name mtl $(RERUN)

# data-efficiency: where do the extra heads help? At each training-set size every arm is searched
# on its own (EFFICIENCY_TRIALS trials at EFFICIENCY_SEARCH), then its best re-trained for SEEDS seeds
EFFICIENCY_ARMS := loss_weights equal_lr baseline_lr
EFFICIENCY_SIZES ?= 500,2000,10000,null
EFFICIENCY_TRIALS ?= 12
# trials per searched parameter: loss_weights (3 keys) gets 36, equal_lr and baseline_lr (1 key) 12
EFFICIENCY_SEARCH ?= --search trainer.max_epochs=3
EFFICIENCY_RERUN ?= trainer.max_epochs=3

data-efficiency: data ## extra heads vs digit-only at 500 / 2,000 / 10,000 / all training images (SEEDS seeds)
	$(PY) studies/compare.py $(EFFICIENCY_RERUN) --arms $(EFFICIENCY_ARMS) --reference baseline_lr \
		--seeds $(SEEDS) --pair loss_weights:equal_lr --storage $(STORAGE) --name data_efficiency \
		--n-trials $(EFFICIENCY_TRIALS) --per-parameter \
		--over data.train_subset=$(EFFICIENCY_SIZES) $(EFFICIENCY_SEARCH) $(ARGS)

# calibrate: compare's test against real training noise at the QUICK fidelity (studies/calibrate.py).
# CALIBRATE_REPS repetitions of the digit-only CNN: A/A (the same configuration as both arms, each on
# CALIBRATE_EXTEND seeds of its own, judged at SEEDS and again at CALIBRATE_EXTEND seeds) and A/B (the
# learning rate x 0.1, paired on SEEDS seeds): REPS x (2 x EXTEND + SEEDS) runs, 2,500 at the defaults.
# Runs are stored as they end (runs/calibrate/calibrate/): it resumes, and more REPS continue it.
CALIBRATE_REPS ?= 100
CALIBRATE_EXTEND ?= 10
.PHONY: calibrate

calibrate: data ## A/A false-difference and A/B detection rates of compare's test on real runs (long: schedule it)
	$(PY) studies/calibrate.py --reps $(CALIBRATE_REPS) --seeds $(SEEDS) --extend-to $(CALIBRATE_EXTEND) \
		$(QUICK) $(ARGS)

PORT ?= 8080

dashboard: $(STAMP) ## optuna-dashboard on http://127.0.0.1:PORT (PORT=8080 unless given) for STORAGE
	$(PY) -m mhtrain.study dashboard --storage $(STORAGE) --port $(PORT)

LOGDIR ?= runs/studies
MLFLOW_PORT ?= 5000

tensorboard: $(STAMP) ## TensorBoard on http://127.0.0.1:6006 over every study's trials (logger=tensorboard)
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host 127.0.0.1

mlflow: $(STAMP) ## MLflow on http://127.0.0.1:5000 over runs/mlflow.db (logger=mlflow)
	mkdir -p runs
	$(VENV)/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --backend-store-uri sqlite:///runs/mlflow.db \
		--default-artifact-root runs/mlartifacts

# EdgeFlowNAS. Every target installs the virtual environment on first use.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

# On Linux plain `tensorflow` uses a GPU only with the CUDA libraries that `tensorflow[and-cuda]` brings, so
# where nvidia-smi lists a GPU the environment asks for that (same version range as requirements.txt).
# GPU=1 / GPU=0 decide instead; `make venv GPU=1` adds the CUDA libraries to an existing environment.
ifeq ($(origin GPU), undefined)
GPU := $(shell gpus=$$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null) && [ -n "$$gpus" ] \
	&& echo 1 || echo 0)
endif
TF_REQUIREMENT := $(shell grep -E '^tensorflow([^a-z0-9_.[-]|$$)' requirements.txt)
ifeq ($(GPU),1)
VENV := .venv/.installed-cuda
PIP_EXTRA := "$(subst tensorflow,tensorflow[and-cuda],$(TF_REQUIREMENT))"
else
VENV := .venv/.installed
PIP_EXTRA :=
endif

.DEFAULT_GOAL := help
.PHONY: help venv train eval demo test check bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV): requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -r requirements.txt $(PIP_EXTRA)
	touch $@

venv: $(VENV) ## create .venv and install requirements.txt (GPU=1: tensorflow[and-cuda]), say which device runs
	@$(PY) devices.py

train: $(VENV) ## train the supernet with config.json (synthetic data, announced, if no base_path)
	$(PY) train.py --config config.json

eval: $(VENV) ## score the newest experiment's best checkpoint on its eval pool
	$(PY) evaluate.py --checkpoint_type best

# A CPU-sized supernet: 64x96 inputs, batch 8, 600 fair steps (docs/training.md, The demo).
DEMO_NAME ?= demo_$(shell date +%Y%m%d_%H%M%S)
DEMO_FLAGS ?= --synthetic --input_h 64 --input_w 96 --batch_size 8 --num_epochs 10 --steps_per_epoch 60 \
	--learning_rate 0.001 --synthetic_train_size 1024 --synthetic_val_size 64 --eval_every 2 --bn_recal_batches 4 \
	--log_every 30

demo: $(VENV) ## ~10 min CPU run on synthetic data, then its evaluation
	$(PY) train.py --config config.json --experiment_name $(DEMO_NAME) $(DEMO_FLAGS)
	$(PY) evaluate.py --experiment_name $(DEMO_NAME) --checkpoint_type best

.PHONY: search
search: $(VENV) ## score all 19,683 subnets of the newest run's best checkpoint, then print pareto.png's path
	$(PY) search.py --checkpoint_type best $(SEARCH_FLAGS)

# The ranking study (docs/ranking.md): a supernet trained on the study setting (study.json), its
# whole-space search, RANK_K subnets trained alone (a third of them twice, with a second seed), the
# search's choice at the median GMACs trained alone twice, then rank.py, recalibrating BN with
# RANK_RECAL batches (512 of study.json's 4 pairs: 2,048 pairs; 64 pairs move a subnet's EPE by up to
# 0.12 on the study's scene, 2,048 by 0.004). Every step resumes where it stopped: run it again after
# any interruption.
RANK_K ?= 12
RANK_JOBS ?= 1
RANK_RECAL ?= 512
STUDY_NAME ?= study

.PHONY: rank
rank: $(VENV) ## the ranking study on study.json: supernet, search, RANK_K subnets alone, rank.py (hours; resumes)
	@if [ ! -f outputs/$(STUDY_NAME)/train_report.json ]; then \
		if [ -f outputs/$(STUDY_NAME)/checkpoints/last/meta.json ]; then \
			$(PY) train.py --resume --experiment_name $(STUDY_NAME) || exit 1; \
		else $(PY) train.py --config study.json --experiment_name $(STUDY_NAME) || exit 1; fi; fi
	$(PY) search.py --experiment_name $(STUDY_NAME)
	$(PY) rank.py --supernet outputs/$(STUDY_NAME) --train $(RANK_K) --search_choice --jobs $(RANK_JOBS) \
		--bn_recal_batches $(RANK_RECAL) --standalone_dir outputs/$(STUDY_NAME)_rank

# The ranking benchmark (rankbench/README.md): its next BENCH_ROWS rows, one per core, each written to
# rankbench/rows/ as it lands (commit them); run it again after any stop. BENCH_SUPERNET=<run> scores a
# supernet trained on rankbench/setting.json against the rows written; BENCH_REFINE="100 400" also refines
# every arch of the rows from it for those steps, BENCH_JOBS at once (docs/ranking.md, the methods table),
# and BENCH_REFINE_LR="1 0.1" at each of those fractions of the supernet's learning rate.
BENCH_ROWS ?= 12
BENCH_JOBS ?= $(shell nproc 2>/dev/null | awk '{print ($$1 > 1) ? 2 : 1}')

.PHONY: rankbench
rankbench: $(VENV) ## train the ranking benchmark's next BENCH_ROWS rows (hours; resumes), or score BENCH_SUPERNET
	$(if $(BENCH_SUPERNET),$(PY) rank.py --bench rankbench --supernet $(BENCH_SUPERNET)\
		$(if $(BENCH_REFINE), --refine_steps $(BENCH_REFINE) --jobs $(BENCH_JOBS))\
		$(if $(BENCH_REFINE_LR), --refine_lr_scale $(BENCH_REFINE_LR)),\
		$(PY) rank.py --bench rankbench --train_rows $(BENCH_ROWS) --jobs $(BENCH_JOBS))

# The suite runs on every core (pytest-xdist), a test class at a time per worker: a class's tests
# share their module fixtures on one worker, so each expensive fixture is built at most once a worker.
PYTEST := $(PY) -m pytest -q -n auto --dist loadscope

test: $(VENV) ## run the whole pytest suite, a worker per core
	$(PYTEST) --durations=20 test_all.py

.PHONY: test-fast
test-fast: $(VENV) ## the tests not marked slow (about half a minute)
	$(PYTEST) -m "not slow" test_all.py

# The self-checks are three processes that mostly start TensorFlow: side by side they take the time of one.
SELF_CHECKS := "supernet.py --self_test" "fair.py --cycles 300 --seed 42 --check" \
	"fair.py --pool --seed 42 --size 12 --check"

check: $(VENV) ## CI: self-checks of the search space and fairness (side by side), then the test suite
	@pids=; for c in $(SELF_CHECKS); do echo "$(PY) $$c"; $(PY) $$c & pids="$$pids $$!"; done; \
	for p in $$pids; do wait $$p || exit 1; done
	$(PYTEST) --durations=20 test_all.py

# One subnet of the newest run (best checkpoint) to TFLite FP32/INT8 and Vela; EXPORT_FLAGS adds flags.
ARCH ?=
.PHONY: export
export: $(VENV) ## export subnet ARCH=0,1,2,... of the newest run to TFLite FP32/INT8 + Ethos-U55 (Vela)
	@test -n "$(ARCH)" || { echo "error: give the subnet, e.g. make export ARCH=0,1,2,0,1,2,0,1,2" >&2; exit 1; }
	$(PY) export.py --arch $(ARCH) --checkpoint_type best $(EXPORT_FLAGS)

# Fit the board: TARGET is a preset of targets/ or a target JSON file; DEPLOY_FLAGS adds flags (e.g. --sizes).
TARGET ?= himax-we2
.PHONY: refine
refine: $(VENV) ## fine-tune the newest run's top candidates from its weights, rescore them (docs/refine.md)
	$(PY) refine.py $(REFINE_FLAGS)

.PHONY: deploy
deploy: $(VENV) ## the newest run's best (arch, input size) for board TARGET, INT8, exported (docs/deployment.md)
	$(PY) deploy.py --target $(TARGET) --checkpoint_type best $(DEPLOY_FLAGS)

bench: $(VENV) ## speed and memory benchmark (docs/performance.md; BENCH_FLAGS to change it)
	$(PY) bench.py $(BENCH_FLAGS)

.PHONY: sintel
sintel: $(VENV) ## score the newest run's best checkpoint on MPI-Sintel (SINTEL=dir), 2 pictures per arch
	$(if $(SINTEL),,$(error set SINTEL=<folder holding training/final and training/flow>))
	$(PY) evaluate.py --checkpoint_type best --dataset sintel --base_path $(SINTEL) --visualize 2

TB_PORT ?= 6006
.PHONY: tensorboard
tensorboard: $(VENV) ## serve the TensorBoard curves of every run in outputs/ (TB_PORT=6006)
	$(PY) -m tensorboard.main --logdir outputs --port $(TB_PORT)

clean: ## remove the virtual environment and caches (keeps outputs/)
	rm -rf .venv .pytest_cache __pycache__

# EdgeFlowNAS. Every target installs the virtual environment on first use.
PY := .venv/bin/python
VENV := .venv/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help venv train eval demo test check bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z]+:.*## / {printf "  make %-7s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV): requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV) ## create .venv and install requirements.txt
	@$(PY) -c "import tensorflow as tf, numpy; print('tensorflow', tf.__version__, 'numpy', numpy.__version__)"

train: $(VENV) ## train the supernet with config.json (synthetic data, announced, if no base_path)
	$(PY) train.py --config config.json

eval: $(VENV) ## score the newest experiment's best checkpoint on its eval pool
	$(PY) evaluate.py --checkpoint_type best

# A CPU-sized supernet: 64x96 inputs, batch 8, 600 fair steps (see README, Demo).
DEMO_NAME ?= demo_$(shell date +%Y%m%d_%H%M%S)
DEMO_FLAGS ?= --synthetic --input_h 64 --input_w 96 --batch_size 8 --num_epochs 10 --steps_per_epoch 60 \
	--learning_rate 0.001 --synthetic_train_size 1024 --synthetic_val_size 64 --eval_every 2 --bn_recal_batches 4 --log_every 30

demo: $(VENV) ## ~10 min CPU run on synthetic data, then its evaluation
	$(PY) train.py --config config.json --experiment_name $(DEMO_NAME) $(DEMO_FLAGS)
	$(PY) evaluate.py --experiment_name $(DEMO_NAME) --checkpoint_type best

# Ranking study: the newest finished demo supernet under outputs/ (or `make demo` first if there is none;
# RANK_SUPERNET=path to choose one), RANK_K subnets trained alone with its config, then rank.py.
RANK_K ?= 9
RANK_SUPERNET ?= $(shell ls -td outputs/demo_*/train_report.json 2>/dev/null | head -1 | xargs -r dirname)

.PHONY: rank
rank: $(VENV) ## demo supernet, RANK_K subnets trained alone, then their ranking (rank.py; 30-60 min on 2 cores)
	@supernet="$(RANK_SUPERNET)"; \
	if [ -z "$$supernet" ]; then name=demo_$$(date +%Y%m%d_%H%M%S); \
		$(MAKE) --no-print-directory demo DEMO_NAME=$$name || exit 1; supernet=outputs/$$name; fi; \
	echo "supernet run: $$supernet"; \
	$(PY) rank.py --supernet $$supernet --train $(RANK_K) --standalone_dir outputs/rank_$$(basename $$supernet)

test: $(VENV) ## run the pytest suite
	$(PY) -m pytest -q test_all.py

check: $(VENV) ## CI: self-checks of the search space and fairness, then the test suite
	$(PY) supernet.py --self_test
	$(PY) fair.py --cycles 300 --seed 42 --check
	$(PY) fair.py --pool --seed 42 --size 12 --check
	$(PY) -m pytest -q test_all.py

bench: $(VENV) ## speed and memory benchmark (see README, Performance; BENCH_FLAGS to change it)
	$(PY) bench.py $(BENCH_FLAGS)

clean: ## remove the virtual environment and caches (keeps outputs/)
	rm -rf .venv .pytest_cache __pycache__

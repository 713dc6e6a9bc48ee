# make run: set up and check T1-T6 on the default MLP; make test: set up and run every test; make lint: ruff and mypy.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup run test lint mutation verify unit bench figures figures-quick vision vision-quick gpu-pack gpu-check clean

# torch is installed first and pinned exactly: this machine has the 2.13.0 CPU wheel on disk, while an
# unpinned or ranged torch would pull a multi-GB CUDA build.
# The other test-time versions are pinned in constraints.txt.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/python -m tvtheory.bound --arch mlp

test: setup
	$(BIN)/python -m pytest tests verification

# ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade, pydocstyle) on everything, mypy on the library
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# weakens the checks one named way at a time in a scratch copy and runs the suite (~28 min here, not in CI)
mutation: setup
	$(BIN)/python benchmarks/mutation/run_mutations.py

unit: setup
	$(BIN)/python -m pytest tests

verify: setup
	$(BIN)/python -m pytest verification

# the peers (pyproject's bench extra) with --no-deps: curvlinops' backpack dependency would pull another torch
BENCH_EXTRA = $(shell $(BIN)/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))")

# tvtheory against curvlinops and PyHessian, then the library's own checks and the CLI (~15 min, 1 torch thread)
bench: setup
	$(BIN)/pip install --quiet --no-deps -c constraints.txt $(BENCH_EXTRA)
	$(BIN)/python benchmarks/bench_peers.py --threads 1
	$(BIN)/python benchmarks/bench_curvature.py --threads 1 --checks grad,hvp,hvp_fr,hvp_rr,t4,t4_svd \
	    --repeats 5 --no-tests

figures: setup
	$(BIN)/python -m paper_figures.make_all

figures-quick: setup
	$(BIN)/python -m paper_figures.make_all --quick

VISION := $(BIN)/python -m tvtheory.experiments.vision

# finetune, merge and atm run every seed (default 0,1,2; --quick 0,1) into <results>/seed<s>/ and
# <artifacts>/seed<s>/; summary writes <results>/e3_summary.json (E3 over seeds: intervals, verdicts); report prints
# it all. Both targets use the 2 cores as two processes of one thread each; every step resumes when rerun.
# vision-quick: one seed per process (under 5 minutes).
VQ := --quick --results results/vision-quick --artifacts runs/vision-quick --threads 1
vision-quick: setup
	{ $(VISION) finetune $(VQ) --seeds 0 && $(VISION) merge $(VQ) --seeds 0 && \
	  $(VISION) atm $(VQ) --seeds 0; } & a=$$!; \
	$(VISION) finetune $(VQ) --seeds 1 && $(VISION) merge $(VQ) --seeds 1 && \
	  $(VISION) atm $(VQ) --seeds 1; b=$$?; wait $$a && test $$b = 0
	$(VISION) summary --results results/vision-quick
	$(VISION) report --results results/vision-quick

# vision: the default run. Finetuning: one seed's 21 runs per process, then seed 2's tasks split 3 / 4; merge and
# atm: one seed's optimizers per process, then seed 2's split 1 / 2.
vision: setup
	{ $(VISION) finetune --seeds 0 --threads 1 && $(VISION) finetune --seeds 2 --threads 1 --tasks cifar10,cars,dtd10; } & a=$$!; \
	$(VISION) finetune --seeds 1 --threads 1 && $(VISION) finetune --seeds 2 --threads 1 \
	  --tasks fashion_mnist,gtsrb,mnist,animal_mnist; b=$$?; wait $$a && test $$b = 0
	{ $(VISION) merge --seeds 0 --threads 1 && $(VISION) merge --seeds 2 --threads 1 --optimizers gd; } & a=$$!; \
	$(VISION) merge --seeds 1 --threads 1 && $(VISION) merge --seeds 2 --threads 1 --optimizers sgd,adamw; b=$$?; \
	  wait $$a && test $$b = 0
	{ $(VISION) atm --seeds 0 --threads 1 && $(VISION) atm --seeds 2 --threads 1 --optimizers sgd; } & a=$$!; \
	$(VISION) atm --seeds 1 --threads 1 && $(VISION) atm --seeds 2 --threads 1 --optimizers gd,adamw; b=$$?; \
	  wait $$a && test $$b = 0
	$(VISION) summary && $(VISION) report

# The GPU scale check (tvtheory/experiments/gpu_check.py, docs/performance.md "GPU scale check").
# gpu-pack: a 48 MiB subset of ../shared/data in gpu_data/ (ignored), the folder the device run carries.
# gpu-check: on CUDA the full check into results/gpu/; without CUDA the --tiny configuration into runs/gpu-tiny/.
# On the lent H200 (its python3 has torch; nothing is installed from a registry), run with carry ["gpu_data"]:
#   R=$$PWD; python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . &&
#   cd /tmp && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 -m tvtheory.experiments.gpu_check
#   --data-root $$R/gpu_data --out $$OUT/gpu --no-progress 2>&1 | tee $$OUT/gpu_check.log
# then copy $$OUT/gpu/gpu_check.json to results/gpu/.
gpu-pack: setup
	$(BIN)/python -m tvtheory.experiments.gpu_pack --dest gpu_data

GPU_CHECK_MODE = $(shell $(BIN)/python -c "import torch; print('--out results/gpu' if torch.cuda.is_available() else '--tiny --out runs/gpu-tiny')")

gpu-check: setup
	test -f gpu_data/manifest.json || $(MAKE) gpu-pack
	$(BIN)/python -m tvtheory.experiments.gpu_check --data-root gpu_data $(GPU_CHECK_MODE)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

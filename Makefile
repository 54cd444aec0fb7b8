# diffspace: `make demo` and `make test` are the whole quick start.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo test wheel-check bench bench-samplers bench-likelihood bench-guidance bench-text bench-scaling \
	bench-families bench-fewstep bench-text-to-image lint venv clean

venv: $(STAMP)

# A user with CUDA can create .venv with their own torch first: pip keeps an installed torch>=2.4.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diffspace train configs/demo.toml --set run.dir=runs/demo --overwrite
	$(BIN)/diffspace eval runs/demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --durations=15 tests

# The built wheel installed into a new venv (local torch wheel, other dependencies from the package index)
# runs `diffspace --version` and `diffspace train demo` outside the repository: about two minutes.
wheel-check: $(STAMP)
	DIFFSPACE_WHEEL_CHECK=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -rs tests/test_packaging.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Slow benchmarks (not part of `make test`); each writes benchmarks/results/<name>.json and .md.
bench: bench-samplers bench-likelihood bench-guidance bench-text bench-scaling bench-families bench-fewstep \
	bench-text-to-image

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install -q -e ".[dev,bench,text]"
	@touch $@

bench-samplers: $(VENV)/.bench
	$(BIN)/python benchmarks/samplers.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/pas_cost.py

bench-likelihood: $(VENV)/.bench
	$(BIN)/python benchmarks/likelihood.py

bench-guidance: $(VENV)/.bench
	$(BIN)/python benchmarks/guidance.py

bench-text: $(VENV)/.bench
	$(BIN)/python benchmarks/text.py

bench-scaling: $(VENV)/.bench
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/omp_wait.py

bench-families: $(VENV)/.bench
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/families.py

bench-fewstep: $(VENV)/.bench
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/fewstep.py

bench-text-to-image: $(VENV)/.bench
	for stage in encoders batch autoencoder diffusion report; do \
		OMP_NUM_THREADS=1 $(BIN)/python benchmarks/text_to_image.py $$stage || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache

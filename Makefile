# diffspace: `make demo` and `make test` are the whole quick start.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo test bench bench-samplers bench-likelihood bench-guidance bench-text bench-scaling lint venv clean

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

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Slow benchmarks (not part of `make test`); each writes benchmarks/results/<name>.json and .md.
bench: bench-samplers bench-likelihood bench-guidance bench-text bench-scaling

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install -q -e ".[dev,bench,text]"
	@touch $@

bench-samplers: $(VENV)/.bench
	$(BIN)/python benchmarks/samplers.py

bench-likelihood: $(VENV)/.bench
	$(BIN)/python benchmarks/likelihood.py

bench-guidance: $(VENV)/.bench
	$(BIN)/python benchmarks/guidance.py

bench-text: $(VENV)/.bench
	$(BIN)/python benchmarks/text.py

bench-scaling: $(VENV)/.bench
	$(BIN)/python benchmarks/scaling.py

clean:
	rm -rf $(VENV) runs .pytest_cache

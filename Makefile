# make demo   install into .venv and denoise the embedded sample image (a few minutes on a CPU)
# make test   install into .venv (with the test extras) and run the test suite, one process
#             per core (one thread each)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch; install your own build (CUDA) first to use a GPU.
TORCH ?= torch==2.13.0

.PHONY: install install-dev demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"

demo: install
	$(BIN)/dip fit --config configs/denoise.yaml

test: install-dev
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto

lint: install-dev
	$(BIN)/ruff check dip_lightning tests benchmarks
	$(BIN)/ruff format --check dip_lightning tests benchmarks
	$(BIN)/mypy dip_lightning

clean:
	rm -rf $(VENV) build dist *.egg-info lightning_logs

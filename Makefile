# Two commands set stnbench up on a fresh machine:  `make train`  and  `make test`.
# Both create .venv and install the project (with its dev extras) on first use.
# Pass Hydra overrides with ARGS, e.g.  make train ARGS="data=rotated model=cnn trainer.max_epochs=3"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install train test test-all lint
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

train: install  ## the default experiment: CNN-STN on RTS MNIST (about 10 minutes on a 2-core CPU)
	$(BIN)/stnbench-train $(ARGS)

test: install  ## the fast test suite (real MNIST, CPU); slow checks are `make test-all`
	$(BIN)/python -m pytest -q $(ARGS)

test-all: install
	$(BIN)/python -m pytest -q -m "" $(ARGS)

lint: install
	$(BIN)/ruff check src tests scripts

# Everything a fresh Debian/Ubuntu machine needs: `make run` and `make test` bootstrap
# the virtual environment, the package and Fashion-MNIST themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN_DIR ?= results/fmnist_mlp_quick

.PHONY: deps venv data run test test-fast lint format bench clean

deps: venv data

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $@

# Debian's dataset-fashion-mnist puts the IDX files in /usr/share/datasets/fashion-mnist.
data:
	@if [ -f $(FASHION_MNIST) ]; then \
	  echo "Fashion-MNIST present in $$(dirname $(FASHION_MNIST))"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get install -y dataset-fashion-mnist || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist; }; \
	else \
	  echo "No apt-get: Fashion-MNIST comes from tensorflow-datasets (online) or --data_dir."; \
	fi

# The main job: the paper's comparison (6 methods, int8 exports, paired weight/node fault
# campaigns, report) on full Fashion-MNIST with the paper's MLP, about 30 minutes on 2
# cores. Resumable: re-running reuses finished work. Ends with the report path and verdicts.
run: deps
	$(BIN)/aftt-reproduce --flagfile=flags/fmnist_mlp_quick.flags --out=$(RUN_DIR)

test: deps
	$(BIN)/pytest -q

# A fast subset while developing (tests marked slow left out); CI and `make test` run all.
test-fast: deps
	$(BIN)/pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: deps
	$(BIN)/python -m benchmarks.train_throughput
	$(BIN)/python -m benchmarks.fault_campaign
	$(BIN)/python -m benchmarks.ray_campaign
	$(BIN)/python -m benchmarks.repair_epoch
	$(BIN)/python -m benchmarks.harden_epoch
	$(BIN)/python -m benchmarks.nested_campaign
	$(BIN)/python -m benchmarks.transient_campaign
	$(BIN)/python -m benchmarks.nan_guard_campaign
	$(BIN)/python -m benchmarks.bit_error_training

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

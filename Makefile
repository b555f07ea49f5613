# Everything sets itself up: `make demo` and `make test` create the virtual environment
# and install the project on first use (needs only python3 and make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= $(or $(TMPDIR),/tmp)/tensorprobe-demo

.PHONY: demo test bench sample-models clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(BIN)/tensorprobe layers sample_models/transfer.keras
	$(BIN)/tensorprobe dump -m sample_models/transfer.keras --layer block1_conv2 --layer predictions \
		-o $(DEMO_DIR)/activations.h5 --overwrite sample_models/input.npy
	$(BIN)/tensorprobe summary $(DEMO_DIR)/activations.h5

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Time and memory of a dump against the naive recipe and the compute and write floors.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Rebuild the committed sample models (deterministic: fixed seeds).
sample-models: $(STAMP)
	$(BIN)/python sample_models/build.py sample_models

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Everything sets itself up: `make demo` and `make test` create the virtual environment
# and install the project on first use (needs only python3 and make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= $(or $(TMPDIR),/tmp)/tensorprobe-demo

.PHONY: demo test sample-models clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(BIN)/tensorprobe layers sample_models/transfer.keras
	$(BIN)/tensorprobe dump -m sample_models/transfer.keras --layer block1_conv2 --layer predictions \
		-o $(DEMO_DIR)/activations.h5 --overwrite sample_models/input.npy
	# a SavedModel (Keras 3 export of transfer.keras), built here rather than committed
	$(BIN)/python sample_models/build.py --savedmodel $(DEMO_DIR)/transfer_savedmodel
	$(BIN)/tensorprobe layers $(DEMO_DIR)/transfer_savedmodel
	$(BIN)/tensorprobe tensors $(DEMO_DIR)/transfer_savedmodel --op BiasAdd
	$(BIN)/tensorprobe dump -m $(DEMO_DIR)/transfer_savedmodel --tensor-match 'block1_conv2_1/BiasAdd' \
		-o $(DEMO_DIR)/tensors.h5 --overwrite sample_models/input.npy

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Rebuild the committed sample models (deterministic: fixed seeds).
sample-models: $(STAMP)
	$(BIN)/python sample_models/build.py sample_models

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

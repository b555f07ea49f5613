# Everything sets itself up: `make demo` and `make test` create the virtual environment
# and install the project on first use (needs only python3 and make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= $(or $(TMPDIR),/tmp)/tensorprobe-demo

.PHONY: demo test bench sample-models pictures docs docs-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# The docs extra (mkdocs-material, mkdocstrings, cogapp) on top of the test set-up.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,docs]'
	touch $(DOCS_STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(BIN)/tensorprobe layers sample_models/transfer.keras
	$(BIN)/tensorprobe dump -m sample_models/transfer.keras --layer block1_conv2 --layer predictions \
		-o $(DEMO_DIR)/activations.h5 --overwrite sample_models/input.npy
	$(BIN)/tensorprobe summary $(DEMO_DIR)/activations.h5
	# a SavedModel (Keras 3 export of transfer.keras), built here rather than committed
	$(BIN)/python sample_models/build.py --savedmodel $(DEMO_DIR)/transfer_savedmodel
	$(BIN)/tensorprobe layers $(DEMO_DIR)/transfer_savedmodel
	$(BIN)/tensorprobe tensors $(DEMO_DIR)/transfer_savedmodel --op BiasAdd
	$(BIN)/tensorprobe dump -m $(DEMO_DIR)/transfer_savedmodel --tensor-match 'block1_conv2_1/BiasAdd' \
		-o $(DEMO_DIR)/tensors.h5 --overwrite sample_models/input.npy

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Time and memory of a dump against the naive recipe and the compute and write floors.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Rebuild the committed sample models (deterministic: fixed seeds).
sample-models: $(STAMP)
	$(BIN)/python sample_models/build.py sample_models

# Regenerate the pictures of the docs (docs/pictures/) from a dump of the sample model.
PICTURES := docs/pictures
pictures: $(STAMP)
	mkdir -p $(DEMO_DIR) $(PICTURES)
	$(BIN)/tensorprobe dump -q -m sample_models/transfer.keras -l block1_conv2 -l block3_conv3 -l fc1 \
		--gradients -o $(DEMO_DIR)/pictures.h5 --overwrite sample_models/input.npy
	$(BIN)/tensorprobe plot $(DEMO_DIR)/pictures.h5 -l block1_conv2 -o $(PICTURES)/feature_maps.png --overwrite
	$(BIN)/tensorprobe plot $(DEMO_DIR)/pictures.h5 -l fc1 -s 0 -s 1 -o $(PICTURES)/units.png --overwrite
	$(BIN)/tensorprobe plot $(DEMO_DIR)/pictures.h5 -l block1_conv2 --hist -o $(PICTURES)/histogram.png --overwrite
	$(BIN)/tensorprobe plot $(DEMO_DIR)/pictures.h5 -l block3_conv3 --heatmap -o $(PICTURES)/gradcam.png --overwrite

# Run every command the docs pages and the README show, write what it prints into them (cog),
# then build the site into site/. docs-check changes nothing: it fails when a page shows an
# output the tool no longer prints, or when the site does not build without a warning.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
docs: $(DOCS_STAMP)
	$(BIN)/python docs/_cog.py -r
	$(MKDOCS) build --strict

docs-check: $(DOCS_STAMP)
	$(BIN)/python docs/_cog.py --check
	$(MKDOCS) build --strict

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache site

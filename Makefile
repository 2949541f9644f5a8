# Two commands: `make serve` and `make test`. Both create .venv if it is missing and install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test install bench clean report

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/jpegweights serve

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/decode.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# The bundled models and their reports, regenerated from the MNIST files (about 4 minutes).
DATA ?= ../shared/data/mnist
JW := $(VENV)/bin/jpegweights
report: $(STAMP)
	for arch in mlp cnn; do \
	  $(JW) train --arch $$arch --data-dir $(DATA) --out models/mnist-$$arch/model.safetensors && \
	  $(JW) compress models/mnist-$$arch/model.safetensors models/mnist-$$arch/model.jpw --quality 20 && \
	  $(JW) evaluate models/mnist-$$arch/model.safetensors --data-dir $(DATA) --target-drop 0.3 \
	    --out docs/results/mnist-$$arch --package models/mnist-$$arch/model-target-0.3.jpw > /dev/null || exit 1; \
	done

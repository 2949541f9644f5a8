# Two commands: `make serve` and `make test`. Both create .venv if it is missing and install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test test-deps install bench clean report

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/jpegweights serve

# nginx and docker-compose (Debian packages) for the deployment tests: installed with apt-get
# when missing and run as root; otherwise those tests are skipped with a reason.
test-deps:
	@if ! command -v nginx >/dev/null && ! test -x /usr/sbin/nginx || ! command -v docker-compose >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx docker-compose >/dev/null; \
	  else echo "nginx/docker-compose missing and not root: their tests will be skipped"; fi; \
	fi

test: $(STAMP) test-deps
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

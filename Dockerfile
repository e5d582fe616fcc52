# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target cpu  -t w2v:cpu  .    API and CPU workers (python:3.11-slim)
#   docker build --target cuda -t w2v:cuda .    GPU workers (CUDA runtime, CuPy from the `gpu` extra)
#
# Both install the dependencies from a list extracted from pyproject.toml before any code is
# copied, so a code change rebuilds only the small layer that installs the package itself.
# The CUDA image gets its Python 3.11 from uv (a standalone CPython build), because the CUDA
# runtime images are Ubuntu-based and do not ship 3.11.

ARG PYTHON_VERSION=3.11
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.8

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- dependency lists
# Only the dependency lists leave this stage: a change to pyproject.toml that leaves them as they
# were (the version, tool settings) keeps every install layer below cached.
FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml .
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
open('requirements.txt', 'w').write('\n'.join(p['dependencies']) + '\n'); \
open('requirements-gpu.txt', 'w').write('\n'.join(p['optional-dependencies']['gpu']) + '\n')"

# ---------------------------------------------------------------- CPU build
FROM ${PYTHON_IMAGE} AS build-cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip pip install -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY model /src/model
COPY worker /src/worker
COPY app /src/app
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps /src

# ---------------------------------------------------------------- CUDA build
FROM ${CUDA_IMAGE} AS build-cuda
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1
RUN --mount=type=cache,target=/root/.cache/uv uv venv --python ${PYTHON_VERSION} /opt/venv
COPY --from=requirements /src/requirements.txt /src/requirements-gpu.txt /tmp/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python -r /tmp/requirements.txt -r /tmp/requirements-gpu.txt
COPY pyproject.toml README.md /src/
COPY model /src/model
COPY worker /src/worker
COPY app /src/app
RUN --mount=type=cache,target=/root/.cache/uv uv pip install --python /opt/venv/bin/python --no-deps /src

# ---------------------------------------------------------------- CUDA runtime image
FROM ${CUDA_IMAGE} AS cuda
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/w2v w2v \
    && mkdir -p /data /var/lib/w2v-gpu-slots \
    && chown w2v:w2v /data /var/lib/w2v-gpu-slots
COPY --from=build-cuda /opt/python /opt/python
COPY --from=build-cuda /opt/venv /opt/venv
# NUMBA_CACHE_DIR: compiled CPU kernels are cached in a writable place (site-packages is not).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    W2V_STORE=/data \
    W2V_HOST=0.0.0.0 \
    W2V_DEVICE=cuda
USER w2v
WORKDIR /home/w2v
# A worker image: no HTTP to probe, and a busy solo-pool worker answers no broker pings until its
# job ends, so there is no health check that would not flag healthy workers; a worker that dies
# exits, and the restart policy brings it back.
HEALTHCHECK NONE
ENTRYPOINT ["w2v"]
CMD ["worker", "--queues", "gpu,cpu", "--device", "cuda"]

# ---------------------------------------------------------------- CPU runtime image (the default target)
FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/w2v w2v \
    && mkdir -p /data \
    && chown w2v:w2v /data
COPY --from=build-cpu /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    W2V_STORE=/data \
    W2V_HOST=0.0.0.0
USER w2v
WORKDIR /home/w2v
EXPOSE 8000
# urllib rather than curl: the slim image has no curl, and one less package is one less CVE feed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('W2V_PORT', '8000'), timeout=4)"
ENTRYPOINT ["w2v"]
# Alone, the image is the whole product: the API plus a worker on the embedded filesystem queue.
CMD ["serve"]

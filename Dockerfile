# syntax=docker/dockerfile:1
#
# One image for the API (`clserve`, the default command) and the update worker (`celery -A worker.app worker …`,
# chosen at run time), in two variants:
#
#   docker build -t continual-serve:cpu .                                        # CPU build of PyTorch (default)
#   docker build -t continual-serve:cuda --build-arg VARIANT=cuda .              # CUDA build of PyTorch
#   docker build -t continual-serve:cuda --build-arg VARIANT=cuda --build-arg CUDA_TAG=cu126 .
#
# Where PyTorch and the other packages come from, for proxied and air-gapped networks (README, "Operations"):
#
#   --build-arg TORCH_INDEX_URL=https://mirror.example/pytorch/whl/cpu   torch (and its dependencies) from this
#                                                                        index instead of download.pytorch.org
#   wheels/*.whl (beside this file)                                      looked at besides the indexes, e.g. the
#                                                                        torch wheel where no reachable index has it
#   --build-arg PIP_INDEX_URL=https://proxy.example/pypi/simple          everything else from this index, not PyPI
#   --build-arg PIP_NO_INDEX=1                                           no index at all: every wheel from wheels/
#
# The CUDA wheels of PyTorch bundle the CUDA runtime, cuDNN and NCCL (as nvidia-* wheels), so both variants share
# the same slim Python base; the host needs only the NVIDIA driver and the container toolkit (`--gpus all`).

ARG PYTHON_VERSION=3.11

# ---- build: a virtual environment with PyTorch and the project, copied whole into the runtime stage -------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build

# cpu | cuda
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# A CUDA tag that download.pytorch.org lists for TORCH_VERSION (cu126, cu128, cu130, …); used when VARIANT=cuda.
ARG CUDA_TAG=cu128
# The index torch is installed from; empty: PyTorch's own for the variant (…/whl/cpu or …/whl/$CUDA_TAG).
ARG TORCH_INDEX_URL=
# pip's own settings, passed through to pip when given (unset otherwise): the index of everything but torch, and
# "no index at all"
ARG PIP_INDEX_URL
ARG PIP_NO_INDEX

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# wheels/ (its README.md alone when nobody put wheels there) is a find-links folder for every pip install below,
# besides whatever the base image already names.
COPY wheels/ /tmp/wheels/
ENV PIP_FIND_LINKS="/tmp/wheels${PIP_FIND_LINKS:+ $PIP_FIND_LINKS}"

# PyTorch first, in its own layer: it is by far the largest and changes least often.
RUN case "$VARIANT" in \
      cpu)  default=https://download.pytorch.org/whl/cpu ;; \
      cuda) default=https://download.pytorch.org/whl/$CUDA_TAG ;; \
      *)    echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && index="${TORCH_INDEX_URL:-$default}" \
 && echo "torch==$TORCH_VERSION from $index (and wheels/: $(ls /tmp/wheels | grep -c '\.whl$') wheels)" \
 && pip install --index-url "$index" "torch==$TORCH_VERSION"

# Then the project's dependencies, in a layer of their own (read from pyproject.toml: a change of the source alone
# does not download them again; `torch>=2.3` is already satisfied), and the project itself (not editable: the runtime
# stage has no source tree).
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY README.md ./
COPY cl_core ./cl_core
COPY registry ./registry
COPY worker ./worker
COPY service ./service
COPY clbench ./clbench
RUN pip install --no-deps . && pip check \
 && python -c "import service.app, worker.pipeline, torch; print('torch', torch.__version__)"

# ---- runtime: the virtual environment, a non-root user, nothing else ---------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ARG VARIANT=cpu
LABEL org.opencontainers.image.title="continual-serve" \
      org.opencontainers.image.description="Online-learning service for PyTorch models (API and update worker)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.continual-serve.variant="$VARIANT"

# A fixed, unprivileged uid/gid (10001), so volume permissions and Kubernetes' runAsUser agree with the image.
RUN groupadd --system --gid 10001 cl \
 && useradd --system --uid 10001 --gid cl --home-dir /home/cl --create-home --shell /usr/sbin/nologin cl \
 && install -d -o cl -g cl -m 0750 /var/lib/continual-serve

COPY --from=build /opt/venv /opt/venv

# Inside a container the API and a worker's metrics endpoint listen on every interface (Prometheus scrapes them
# from another container). clserve still refuses to start there without API keys (CL_API_KEYS) unless
# CL_INSECURE=true, so an image started by mistake is never an open, writable service.
# CL_DEVICE=auto: the CUDA variant uses the GPU when one is visible, the CPU variant always runs on the CPU.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CL_HOST=0.0.0.0 \
    CL_PORT=8000 \
    CL_DATA_DIR=/var/lib/continual-serve \
    CL_WORKER_METRICS_HOST=0.0.0.0 \
    CL_WORKER_METRICS_PORT=9100 \
    CL_DEVICE=auto

USER 10001:10001
WORKDIR /home/cl

# 8000: the API (and its /metrics); 9100: a worker's Prometheus endpoint
EXPOSE 8000 9100

# The API's liveness endpoint. A worker (no /healthz) overrides this with a check of its metrics port; see
# docker-compose.yml. No curl in a slim image: the Python standard library does the request.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('CL_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status != 200)"]

CMD ["clserve"]

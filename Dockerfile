# syntax=docker/dockerfile:1
#
# One image for the API (`clserve`, the default command) and the update worker (`celery -A worker.app worker …`,
# chosen at run time), in two variants:
#
#   docker build -t continual-serve:cpu .                                        # CPU build of PyTorch (default)
#   docker build -t continual-serve:cuda --build-arg VARIANT=cuda .              # CUDA build of PyTorch
#   docker build -t continual-serve:cuda --build-arg VARIANT=cuda --build-arg CUDA_TAG=cu126 .
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

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# PyTorch first, in its own layer: it is by far the largest and changes least often.
RUN case "$VARIANT" in \
      cpu)  index=https://download.pytorch.org/whl/cpu ;; \
      cuda) index=https://download.pytorch.org/whl/$CUDA_TAG ;; \
      *)    echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && pip install --index-url "$index" "torch==$TORCH_VERSION"

# Then the project (not editable: the runtime stage has no source tree). Its `torch>=2.3` is already satisfied.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cl_core ./cl_core
COPY registry ./registry
COPY worker ./worker
COPY service ./service
COPY clbench ./clbench
RUN pip install . && python -c "import service.app, worker.pipeline, torch; print('torch', torch.__version__)"

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

# syntax=docker/dockerfile:1
# The deepmoney image: what training pods (`python -m deepmoney.train`), Kubeflow Pipelines components and the
# news-analysis chain's step models (`deepmoney serve --steps ...`) run. The LLM itself is served by KServe's
# Hugging Face runtime (vLLM), not from this image.
#
# Build and push with scripts/build-image.sh: it tags ghcr.io/deepmoney/deepmoney:<package version> (the tag
# `deepmoney.kube.default_image()` renders), never :latest. tests/test_image.py keeps the pins below in step
# with pyproject.toml and scripts/install.sh.

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04

# --- build: the virtual environment, with DeepSpeed's CUDA ops compiled for the GPUs we train on -----------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# A100 (8.0) and H100/H200 (9.0): fused and CPU Adam are built here instead of JIT-compiled in every pod.
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ninja-build git \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/deepmoney
ENV PATH=/opt/deepmoney/bin:$PATH
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deepmoney ./deepmoney
RUN DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip install ".[train,serve,cluster,pipelines,postgres]" \
 && pip check

# --- runtime: the CUDA runtime, the environment, a non-root user ---------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION}
ARG DEEPMONEY_VERSION=0.1.0
LABEL org.opencontainers.image.title="deepmoney" \
      org.opencontainers.image.description="Financial reports -> domain LLM -> news-analysis service" \
      org.opencontainers.image.version="${DEEPMONEY_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/deepmoney /opt/deepmoney
# uid 10001: launch.run_as_user, the step models' and the chart's runAsUser (numeric, so the kubelet can enforce
# runAsNonRoot; above the uids of host users, checkov CKV_K8S_40). Ubuntu's user "ubuntu" (uid 1000) is removed.
RUN userdel --remove ubuntu 2>/dev/null || true \
 && groupadd --gid 10001 deepmoney \
 && useradd --uid 10001 --gid 10001 --home-dir /workspace --no-create-home --shell /usr/sbin/nologin deepmoney \
 && mkdir -p /workspace && chown 10001:10001 /workspace
# Caches under /tmp: the step models run with a read-only root filesystem and an emptyDir on /tmp.
ENV PATH=/opt/deepmoney/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache \
    TOKENIZERS_PARALLELISM=false
USER 10001:10001
WORKDIR /workspace
CMD ["deepmoney", "--help"]

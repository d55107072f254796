# The middle tier, `aoai-realtime serve`, as a container image (docs/deploy.md).
#
#   docker build -t aoai-realtime .                      Azure only: small, no build tools
#   docker build -t aoai-realtime:local --build-arg LOCAL=1 .
#                                                        + the offline engine ([local] extra);
#                                                        llama-cpp-python compiles (~10 min)
#   docker run -p 8787:8787 -e AOAI_REALTIME_SERVE_TOKEN=... \
#       -e AZURE_OPENAI_ENDPOINT=https://RES.openai.azure.com -e AZURE_OPENAI_DEPLOYMENT=gpt-realtime \
#       aoai-realtime
#
# It listens on 0.0.0.0:$PORT (8787 unless the platform sets PORT), so `serve` wants its access
# token: $AOAI_REALTIME_SERVE_TOKEN (a platform secret), or a mounted file with
# `serve ... --token-file /path`; `--no-auth` only behind an ingress that authenticates every
# request. Nothing secret is baked into the image: Azure settings come from the environment
# (no key: a managed identity via Microsoft Entra ID).

# The base image of both stages. Pin it by digest for reproducible builds
# (python:3.12-slim-bookworm@sha256:...). Any Debian-based image with python3 and its venv
# module works.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# 1: also install the [local] extra (offline engine). 0 (the default): Azure only.
ARG LOCAL=0

# ---- builder: a virtual environment in /opt/aoai-realtime, built with whatever it needs
FROM ${PYTHON_IMAGE} AS builder
ARG LOCAL
# llama-cpp-python's build flags. Empty: on x86-64, the Makefile's portable flags (AVX2, not
# -march=native, whose AMX kernels fault on some virtual machines); elsewhere llama.cpp's own.
ARG CMAKE_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Build tools only for LOCAL=1; they stay in this stage. (DL3008, unpinned apt packages: the
# base image's Debian release fixes their versions; exact pins break at every point release.)
# hadolint ignore=DL3008
RUN case "$LOCAL" in \
      0) ;; \
      1) apt-get update \
         && apt-get install -y --no-install-recommends build-essential cmake \
         && rm -rf /var/lib/apt/lists/* ;; \
      *) echo "LOCAL must be 0 (Azure only) or 1 (with the offline engine), not '$LOCAL'" >&2; \
         exit 1 ;; \
    esac \
    && python3 -m venv /opt/aoai-realtime

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN if [ "$LOCAL" = 1 ]; then \
      if [ -z "$CMAKE_ARGS" ] && [ "$(uname -m)" = x86_64 ]; then \
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"; \
      fi; \
      export CMAKE_ARGS; \
      target=".[local]"; \
    else \
      target="."; \
    fi \
    && /opt/aoai-realtime/bin/pip install --no-cache-dir "$target" \
    && if [ "$LOCAL" = 1 ]; then \
      /opt/aoai-realtime/bin/pip install --no-cache-dir --no-deps "pipecat-ai==1.14.0"; \
    fi \
    && /opt/aoai-realtime/bin/aoai-realtime serve --help > /dev/null

# ---- the image: the base image, the virtual environment, an unprivileged user
FROM ${PYTHON_IMAGE}
ARG LOCAL
# The local engine's llama.cpp build uses OpenMP at run time. (DL3008: as in the builder.)
# hadolint ignore=DL3008
RUN if [ "$LOCAL" = 1 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 aoai \
    && useradd --system --uid 10001 --gid aoai --home-dir /home/aoai --create-home \
       --shell /usr/sbin/nologin aoai

COPY --from=builder /opt/aoai-realtime /opt/aoai-realtime

ENV PATH="/opt/aoai-realtime/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PORT=8787
# An empty working directory: no .env or .dev.vars is read unless the operator mounts one.
WORKDIR /home/aoai
USER 10001:10001
EXPOSE 8787

# /healthz needs no token; 127.0.0.1 is always an allowed host. Python, not curl: the slim
# image has no curl. The start period covers the local engine loading its models.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('PORT') or '8787'), timeout=4).read()"]

# `docker run IMAGE doctor` checks the settings. Arguments given to `docker run IMAGE ...`
# (Container Apps: --args; App Service: the startup command) replace the whole CMD: start them
# with `serve --host 0.0.0.0`. Without the [local] extra the local engine is not offered; in a
# LOCAL=1 image add --no-local to offer only Azure.
ENTRYPOINT ["aoai-realtime"]
CMD ["serve", "--host", "0.0.0.0", "--log-json"]
